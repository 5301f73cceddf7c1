"""Where a video file's frames and facts come from: the ffmpeg binary that imageio-ffmpeg ships decodes
it, and PyAV reads what its container states (frame count, rate, duration) without decoding.

`FfmpegReader` runs ffmpeg with its log at `level+info` on a pipe that a thread drains as frames
stream: the frame size comes from ffmpeg's own OUTPUT stream line (so autorotation is applied), and
every line at warning level or above is counted, the first few kept, so that memory stays bounded
however much ffmpeg complains. `stream_facts` is the one home of "what the file states".
`decode_warning` compares the two: one line per video, or none for a clean one.
"""

from __future__ import annotations

import collections
import contextlib
import re
import subprocess
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from dfc.errors import UserError

# ffmpeg levels at which a message counts as a warning about the file
_WARNING_LEVELS = ("panic", "fatal", "error", "warning")
_LEVEL = re.compile(r"\[(panic|fatal|error|warning|info|verbose|debug|trace)\] ?")
# Messages at warning level that say nothing about the file: swscale's note on the JPEG-range pixel
# formats (MJPEG in .avi, our own .avi output included).
_HARMLESS = ("deprecated pixel format used",)
# Messages about the audio, subtitle and data streams, which are not decoded (`-an -sn`, only 0:v:0)
_OTHER_STREAMS = ("[aist#", "[sist#", "[dist#")
KEPT_WARNINGS = 3  # the first few warning lines are kept; the rest are only counted
_KEPT_LINES = 200  # log lines kept before the output header (for errors) and after it (a tail)
_MAX_LINE = 4096


def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg
    except ImportError as err:  # pragma: no cover - the `video` extra is missing
        raise UserError("reading and writing videos needs the 'video' extra: pip install '.[video]'") from err
    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_reason(text: str) -> str:
    """The line of an ffmpeg log that says what went wrong, without the noise around it."""
    lines = []
    for line in text.splitlines():
        line = re.sub(r"^(\[[^\]]*\]\s*)+", "", line.strip())  # "[mov,mp4 @ 0x55...] [error] " prefixes
        line = re.sub(r"^Error opening (input|output) files?: ", "", line)
        if line and not line.startswith("==="):
            lines.append(line)
    # The most specific symptom first: "moov atom not found" (an unfinished mp4) beats the generic
    # "Invalid data found" that ffmpeg prints after it.
    for word in ("moov atom", "not found", "no such", "invalid", "error", "unknown"):
        for line in reversed(lines):
            if word in line.lower():
                return line
    return lines[-1] if lines else "ffmpeg could not read it"


def has_no_frames(ffmpeg_log: str) -> bool:
    return "received no packets" in ffmpeg_log or "after EOF" in ffmpeg_log


# ------------------------------------------------------------------------------- what the file states


@dataclass(frozen=True)
class StreamFacts:
    """What a file's container states about its first video stream; None where it states nothing
    (`nb_frames` is absent from many .mkv and .webm files, a raw stream has no duration)."""

    nb_frames: int | None = None
    rate: Fraction | None = None
    duration: float | None = None


def stream_facts(path: str | Path) -> StreamFacts:
    """The first video stream's `nb_frames`, frame rate and duration from the container's headers
    (PyAV: libavformat's header probe, as ffprobe reads them; no frame is decoded here).

    The rate is the average rate (`avg_frame_rate`, what ffmpeg prints as "fps"), else the stream's
    base rate ("tbr"). A file PyAV cannot open gives empty facts, quietly: ffmpeg, which reads the
    frames, is the one that explains what is wrong with a file.
    """
    try:
        import av
    except ImportError as err:  # pragma: no cover - the `video` extra is missing
        raise UserError("reading videos needs the 'video' extra: pip install '.[video]'") from err
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.video:
                return StreamFacts()
            stream = container.streams.video[0]
            rate = next((r for r in (stream.average_rate, stream.base_rate) if r and r > 0), None)
            duration = None
            if stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / 1_000_000  # AV_TIME_BASE
            return StreamFacts(
                nb_frames=stream.frames or None,
                rate=Fraction(rate) if rate else None,
                duration=duration if duration and duration > 0 else None,
            )
    except Exception:  # noqa: BLE001 - any probe failure (damaged, odd, unsupported): nothing stated
        return StreamFacts()


# ---------------------------------------------------------------------------------- ffmpeg's frames


class _Log(threading.Thread):
    """Drains ffmpeg's stderr (`-loglevel level+info`): finds the output frame size, counts warnings."""

    def __init__(self, stream):
        super().__init__(daemon=True, name="ffmpeg-log")
        self._stream = stream
        self.size: tuple[int, int] | None = None
        self.warnings = 0
        self.first: list[str] = []  # the first KEPT_WARNINGS warning messages, without prefixes
        # the start of the log and its latest lines: what explains a failure to open or a damaged end
        self.head: list[str] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=_KEPT_LINES)
        self.ready = threading.Event()  # the size is known, or ffmpeg ended without one
        self._in_output = False
        self.start()

    def run(self) -> None:
        try:
            while line := self._stream.readline(_MAX_LINE):
                self._take(line.decode("utf-8", "replace").rstrip("\r\n"))
        except (OSError, ValueError):  # the pipe was closed under us: ffmpeg is being stopped
            pass
        finally:
            self.ready.set()

    def _take(self, line: str) -> None:
        level = _LEVEL.search(line)
        message = line[level.end() :].strip() if level else line.strip()
        if level and level.group(1) in _WARNING_LEVELS:
            about_video = not line.startswith(_OTHER_STREAMS)
            if about_video and not any(text in message for text in _HARMLESS):
                self.warnings += 1
                if len(self.first) < KEPT_WARNINGS:
                    self.first.append(message)
        if self.size is None:
            (self.head if len(self.head) < _KEPT_LINES else self.tail).append(line)
            if message.startswith("Output #"):
                self._in_output = True
            elif self._in_output and message.startswith("Stream #") and " Video: " in message:
                found = re.search(r" (\d+)x(\d+)[, \[]", message)
                if found:
                    self.size = (int(found.group(1)), int(found.group(2)))
                    self.ready.set()
        else:
            self.tail.append(line)

    def text(self) -> str:
        return "\n".join([*self.head, *self.tail])


class FfmpegReader:
    """ffmpeg decoding a file's first video stream to rgb24 frames on a pipe.

    Every decoded frame comes exactly once (`-fps_mode passthrough`); audio and subtitles are left
    out. ffmpeg runs in its own session (process group), so a Ctrl-C in the terminal reaches only
    Python, which stops it (`stop`) as it unwinds; SIGTERM unwinds the same way (dfc.cli).
    """

    def __init__(self, path: Path, max_frames: int | None = None):
        self.path = path
        cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+info"]
        cmd += ["-i", str(path), "-map", "0:v:0", "-an", "-sn", "-fps_mode", "passthrough"]
        if max_frames is not None:
            cmd += ["-frames:v", str(max_frames)]
        cmd += ["-pix_fmt", "rgb24", "-c:v", "rawvideo", "-f", "image2pipe", "-"]
        self._process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            self._log = _Log(self._process.stderr)
            self._log.ready.wait()
            if self._log.size is None:
                self._process.wait()
                self._log.join()
                raise self._open_error(self._log.text())
        except BaseException:
            self.stop()
            raise
        self.width, self.height = self._log.size
        self.frame_bytes = self.width * self.height * 3
        self.returncode: int | None = None

    def _open_error(self, text: str) -> UserError:
        if "matches no streams" in text:
            return UserError(f"{self.path}: not a video (no video stream found)")
        if has_no_frames(text):
            return UserError(f"{self.path}: the video has no frames")
        return UserError(f"{self.path}: not a video ffmpeg can read ({ffmpeg_reason(text)})")

    def read(self) -> bytes | None:
        """The next frame's bytes, or None after the last (then `returncode` and `warnings` are final)."""
        data = self._process.stdout.read(self.frame_bytes)
        if len(data) == self.frame_bytes:
            return data
        self.returncode = self._process.wait()
        self._log.join()
        if data:
            raise UserError(f"{self.path}: the video is damaged ({ffmpeg_reason(self._log.text())})")
        return None

    @property
    def warnings(self) -> tuple[int, list[str]]:
        """How many lines ffmpeg logged at warning level or above while decoding, and the first few."""
        return self._log.warnings, list(self._log.first)

    def stop(self) -> None:
        """End ffmpeg now (idempotent): after the last frame it has exited; before, it is killed."""
        process = self._process
        if process.poll() is None:
            process.kill()
        with contextlib.suppress(OSError):
            process.stdout.close()
        process.wait()
        log = getattr(self, "_log", None)
        if log is not None:
            log.join()
        with contextlib.suppress(OSError):
            process.stderr.close()


# ------------------------------------------------------------------------------------- the warning


def decode_warning(
    path: str | Path, decoded: int, facts: StreamFacts, warnings: tuple[int, list[str]], *, whole: bool
) -> str | None:
    """The one line about a video whose decoding was not clean, or None.

    It says when the frames decoded differ by more than one from the container's `nb_frames` (where
    the container states none, from its duration times its rate, and says so; `whole`: the video
    was read to its end), and when ffmpeg logged at warning level or above while decoding (how
    many lines, and the first). None for no frames at all: that is an error of its own, which the
    callers give ("the video has no frames"), and one line is all the user gets.
    """
    if decoded == 0:
        return None
    parts = []
    if whole and facts.nb_frames:
        if abs(facts.nb_frames - decoded) > 1:
            parts.append(f"decoded {decoded} frames, its container states {facts.nb_frames} (nb_frames)")
    elif whole and facts.rate and facts.duration:
        stated = round(facts.duration * facts.rate)
        if abs(stated - decoded) > 1:
            parts.append(
                f"decoded {decoded} frames, its container states no frame count and {facts.duration:g} s "
                f"at {float(facts.rate):g} fps make {stated} (it may have a variable frame rate)"
            )
    count, first = warnings
    if count:
        quoted = first[0] if len(first[0]) <= 160 else first[0][:157] + "..."
        plural = "s" if count != 1 else ""
        parts.append(f'ffmpeg reported {count} warning{plural} while decoding (first: "{quoted}")')
    if not parts:
        return None
    return f"warning: {path}: {'; '.join(parts)}; the file may be damaged"
