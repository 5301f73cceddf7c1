"""Writing a video frame by frame as frames are made, so that memory does not grow with its length:
the one video writer (`dfc.video.write_video` writes through it too).

The kind follows the path (a video suffix through ffmpeg, or a folder of PNG frames when the path ends
in '/' or has no suffix); the output appears atomically through `common.atomic` on a clean exit, and
any failure or interruption (Ctrl-C, SIGTERM) stops ffmpeg and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from common.atomic import StagedOutput
from dfc.errors import UserError
from dfc.video import (
    FFMPEG_FORMATS,
    FOLDER_INFO,
    FRAME_PATTERN,
    OUTPUT_SUFFIXES,
    ffmpeg_exe,
    ffmpeg_reason,
    fps_argument,
    is_folder_target,
)


class VideoSink:
    """`with VideoSink(path, width, height, fps) as sink: sink.write(frame)...`; committed on a clean exit."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: float):
        self.folder = is_folder_target(path)  # before Path(), which drops a trailing '/'
        self.path, self.width, self.height, self.fps = Path(path), width, height, float(fps)
        self.count = 0
        self.written_fps = self.fps  # what the file can say; a GIF rounds the frame delay
        self._process: subprocess.Popen | None = None
        self._log = None
        if not self.folder and self.path.suffix.lower() not in FFMPEG_FORMATS:
            raise UserError(
                f"{path}: unknown video type {self.path.suffix!r}; use one of {', '.join(OUTPUT_SUFFIXES)}"
            )
        if not self.path.absolute().parent.is_dir():
            raise UserError(f"{path}: the folder {self.path.absolute().parent} does not exist")
        try:
            self._staged = StagedOutput(self.path, is_dir=self.folder)
        except OSError as err:
            raise UserError(f"{path}: cannot write ({err.strerror or err})") from None
        if not self.folder:
            self._start_ffmpeg()

    def _start_ffmpeg(self) -> None:
        muxer, even_args, odd_args = FFMPEG_FORMATS[self.path.suffix.lower()]
        codec = even_args if self.width % 2 == 0 and self.height % 2 == 0 else odd_args
        if self.path.suffix.lower() == ".gif":  # delays in whole hundredths of a second, at least one
            self.written_fps = 100 / max(1, round(100 / self.fps))
        self._log = tempfile.TemporaryFile()
        cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24"]
        cmd += ["-s", f"{self.width}x{self.height}", "-framerate", fps_argument(self.fps), "-i", "-"]
        cmd += [*codec, "-f", muxer, str(self._staged.tmp)]
        # the log goes to a file: a pipe could fill up and block ffmpeg while frames are still coming
        self._process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=self._log)

    def write(self, frame: np.ndarray) -> None:
        """One uint8 frame `(height, width, 3)`."""
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"expected a uint8 frame {(self.height, self.width, 3)}, got {frame.dtype} {frame.shape}"
            )
        if self.folder:
            from PIL import Image

            try:
                Image.fromarray(frame).save(self._staged.tmp / FRAME_PATTERN.format(self.count))
            except OSError as err:
                raise UserError(f"{self.path}: cannot write ({err.strerror or err})") from None
        else:
            try:
                self._process.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
            except BrokenPipeError:
                self._fail()
        self.count += 1

    def _fail(self) -> None:
        returncode = self._stop(kill=False)
        self._log.seek(0)
        reason = ffmpeg_reason(self._log.read().decode(errors="replace"))
        raise UserError(f"{self.path}: ffmpeg could not write the video ({reason}, exit {returncode})")

    def _stop(self, kill: bool) -> int:
        process, self._process = self._process, None
        if process is None:
            return 0
        if kill:
            process.kill()
        with contextlib.suppress(BrokenPipeError, OSError):
            process.stdin.close()
        return process.wait()

    def close(self) -> Path:
        """Finish the file (or folder) and put it in place."""
        if self.count == 0:
            raise ValueError("cannot write a video with no frames")
        if self.folder:
            info = {"fps": self.fps, "num_frames": self.count, "width": self.width, "height": self.height}
            (self._staged.tmp / FOLDER_INFO).write_text(json.dumps(info) + "\n", encoding="utf-8")
        else:
            self._process.stdin.close()
            if self._process.wait() != 0:
                self._fail()
            self._process = None
        self._staged.commit()
        return self.path

    def abort(self) -> None:
        self._stop(kill=True)
        self._staged.discard()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> VideoSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                try:
                    self.close()
                except OSError as err:
                    raise UserError(f"{self.path}: cannot write ({err.strerror or err})") from None
        finally:
            self.abort()  # after a commit there is nothing left to remove
