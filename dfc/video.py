"""Reading, fitting, splitting and writing users' videos (numpy + Pillow + imageio-ffmpeg + PyAV; no torch).

Everything a person can get wrong (a missing file, a text file, a folder that is not empty) ends in a
one-line `UserError`; wrong array shapes from the program itself are `ValueError`s.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from common.atomic import atomic_output as staged_output
from dfc.errors import UserError
from dfc.video_source import (
    FfmpegReader,
    StreamFacts,
    decode_warning,
    ffmpeg_exe,
    ffmpeg_reason,
    has_no_frames,
    stream_facts,
)

FIT_MODES = ("crop", "stretch")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
FRAME_PATTERN = "frame_{:05d}.png"
FOLDER_INFO = "video.json"  # a PNG folder keeps its fps here, since PNGs have no frame rate
DEFAULT_FPS = 25.0  # ffmpeg's own assumption for inputs without a frame rate (still images)

_X264 = ["-c:v", "libx264", "-preset", "medium", "-crf", "18"]
_MP4_420 = [*_X264, "-pix_fmt", "yuv420p", "-movflags", "+faststart"]
# H.264 4:2:0 cannot code an odd width or height (its crop unit is 2 pixels), so odd sizes are written
# 4:4:4 (High 4:4:4 profile) and decode at exactly the requested size. Videos that were 4:2:0 to begin
# with have even sizes and keep the widely playable 4:2:0.
_X264_444 = [*_X264, "-pix_fmt", "yuv444p"]
# VP9 and MJPEG store the picture size themselves, so any size works.
_VP9 = ["-c:v", "libvpx-vp9", "-crf", "30", "-b:v", "0", "-pix_fmt", "yuv420p"]
_MJPEG = ["-c:v", "mjpeg", "-q:v", "2", "-pix_fmt", "yuvj444p"]
# One palette for the whole clip (per-frame palettes flicker). GIF delays are whole 1/100 s, so a rate
# whose period is not (30 fps) comes back approximately.
_GIF = ["-filter_complex", "split[a][b];[a]palettegen=stats_mode=full[p];[b][p]paletteuse", "-loop", "0"]

# suffix -> (ffmpeg muxer, codec arguments for even sizes, for odd sizes)
FFMPEG_FORMATS = {
    ".mp4": ("mp4", _MP4_420, _X264_444),
    ".m4v": ("mp4", _MP4_420, _X264_444),
    ".mov": ("mov", _MP4_420, _X264_444),
    ".mkv": ("matroska", [*_X264, "-pix_fmt", "yuv420p"], _X264_444),
    ".webm": ("webm", _VP9, _VP9),
    ".avi": ("avi", _MJPEG, _MJPEG),
    ".gif": ("gif", _GIF, _GIF),
}
OUTPUT_SUFFIXES = (*FFMPEG_FORMATS, "/ (PNG folder)")


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int


@dataclass(frozen=True)
class Crop:
    """How frames were fitted to the model, so decompression can put them back.

    `left, top, width, height` is the box of the source frame that the model saw, in source pixels
    (the whole frame for "stretch").
    """

    mode: str
    source_width: int
    source_height: int
    left: int
    top: int
    width: int
    height: int
    model_width: int
    model_height: int

    def __post_init__(self) -> None:
        if self.mode not in FIT_MODES:
            raise ValueError(f"fit mode must be one of {FIT_MODES}, got {self.mode!r}")
        sizes = (
            self.source_width,
            self.source_height,
            self.width,
            self.height,
            self.model_width,
            self.model_height,
        )
        if min(sizes) < 1 or self.left < 0 or self.top < 0:
            raise ValueError(f"invalid crop {self}")
        if self.left + self.width > self.source_width or self.top + self.height > self.source_height:
            raise ValueError(f"crop box outside the source frame: {self}")


# ----------------------------------------------------------------------------------------------- reading


def _check_input(path: str | os.PathLike) -> Path:
    from common.files import InputFileError, check_regular

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    try:  # a FIFO or a device would keep ffmpeg reading forever
        check_regular(path, folder_ok=True, what="a video file or a folder of frames")
    except InputFileError as err:
        raise UserError(str(err)) from None
    if not path.is_dir() and not os.access(path, os.R_OK):
        raise UserError(f"{path}: permission denied")
    return path


def _open_ffmpeg(path: Path, max_frames: int | None) -> tuple[VideoInfo, FfmpegReader, StreamFacts]:
    """ffmpeg started on the file (a file it cannot read fails here, in its own words), then what the
    file's container states, whose rate is the video's fps."""
    reader = FfmpegReader(path, max_frames)
    try:
        facts = stream_facts(path)
    except BaseException:
        reader.stop()
        raise
    fps = float(facts.rate) if facts.rate else DEFAULT_FPS
    return VideoInfo(num_frames=0, fps=fps, width=reader.width, height=reader.height), reader, facts


class VideoFrames(Iterator[np.ndarray]):
    """The frames `open_video` yields, uint8 `(H, W, 3)` one at a time: read to the end, or `close()`.

    After the last frame of a video file, `warning` is the one line printed on stderr about it (the
    frame count differs from what its container states, or ffmpeg complained while decoding; see
    `dfc.video_source.decode_warning`), None for a clean video and for a folder of images.
    """

    def __init__(
        self,
        frames: Iterator[np.ndarray] | None = None,
        reader: FfmpegReader | None = None,
        *,
        info: VideoInfo | None = None,
        facts: StreamFacts | None = None,
        max_frames: int | None = None,
    ):
        self._frames, self._reader = frames, reader
        self._info, self._facts, self._max_frames = info, facts, max_frames
        self.count = 0
        self.warning: str | None = None

    def __next__(self) -> np.ndarray:
        if self._reader is None:
            frame = next(self._frames)
            self.count += 1
            return frame
        try:
            data = self._reader.read()
        except BaseException:  # a damaged file, Ctrl-C, SIGTERM: ffmpeg stops now
            self.close()
            raise
        if data is None:
            self._finish()
            raise StopIteration
        self.count += 1
        return np.frombuffer(data, np.uint8).reshape(self._info.height, self._info.width, 3)

    def _finish(self) -> None:
        reader, self._reader = self._reader, None
        self._frames = iter(())
        reader.stop()
        whole = self._max_frames is None or self.count < self._max_frames
        self.warning = decode_warning(reader.path, self.count, self._facts, reader.warnings, whole=whole)
        if self.warning:
            print(self.warning, file=sys.stderr)

    def close(self) -> None:
        """Stop reading (ffmpeg is stopped); no warning line for a video not read to its end."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.stop()
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()
        self._frames = iter(())

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _folder_fps(folder: Path) -> float:
    try:
        fps = float(json.loads((folder / FOLDER_INFO).read_text(encoding="utf-8"))["fps"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_FPS
    return fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS


def _iter_folder(folder: Path, max_frames: int | None) -> tuple[VideoInfo, Iterator[np.ndarray]]:
    from PIL import Image, UnidentifiedImageError

    files = _image_files(folder)[:max_frames]
    if not files:
        raise UserError(f"{folder}: folder holds no image frames ({', '.join(IMAGE_SUFFIXES)})")
    try:
        with Image.open(files[0]) as first:
            width, height = first.size
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"{files[0]}: not a readable image ({err})") from None
    info = VideoInfo(num_frames=len(files), fps=_folder_fps(folder), width=width, height=height)

    def frames() -> Iterator[np.ndarray]:
        for file in files:
            try:
                with Image.open(file) as image:
                    frame = np.asarray(image.convert("RGB"))
            except (OSError, UnidentifiedImageError) as err:
                raise UserError(f"{file}: not a readable image ({err})") from None
            if frame.shape[:2] != (height, width):
                raise UserError(
                    f"{file}: frame is {frame.shape[1]}x{frame.shape[0]}, the first frame is {width}x{height}"
                )
            yield frame

    return info, frames()


def open_video(path: str | os.PathLike, *, max_frames: int | None = None) -> tuple[VideoInfo, VideoFrames]:
    """Start reading a video: its info (num_frames 0 = not counted yet for files) and its frames.

    Streaming lets a caller fit each frame to the model as it arrives instead of holding a long
    full-resolution video in memory. A folder of images reads as a video (sorted by file name).
    After the last frame of a file, one line on stderr says when it was not clean (`VideoFrames`).
    """
    if max_frames is not None and max_frames < 1:
        raise UserError(f"max_frames must be at least 1, got {max_frames}")
    path = _check_input(path)
    if path.is_dir():
        info, frames = _iter_folder(path, max_frames)
        return info, VideoFrames(frames)
    info, reader, facts = _open_ffmpeg(path, max_frames)
    return info, VideoFrames(reader=reader, info=info, facts=facts, max_frames=max_frames)


def read_video(path: str | os.PathLike, *, max_frames: int | None = None) -> tuple[np.ndarray, VideoInfo]:
    """All frames of a video (or of the first `max_frames`) as uint8 `(T, H, W, 3)`, and its info."""
    info, frames = open_video(path, max_frames=max_frames)
    buffer = bytearray()  # grows without a second full copy at the end, unlike np.stack of a list
    count = 0
    for frame in frames:
        buffer += frame.tobytes()
        count += 1
    if count == 0:
        raise UserError(f"{path}: the video has no frames")
    video = np.frombuffer(buffer, np.uint8).reshape(count, info.height, info.width, 3)
    return video, VideoInfo(count, info.fps, info.width, info.height)


def _count_frames(path: Path) -> int:
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-progress", "pipe:1", "-nostats", "-i", str(path)]
    cmd += ["-map", "0:v:0", "-fps_mode", "passthrough", "-f", "null", "-"]
    result = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    counts = re.findall(r"^frame=(\d+)$", result.stdout, flags=re.MULTILINE)
    if has_no_frames(result.stderr) or (counts and int(counts[-1]) == 0):
        raise UserError(f"{path}: the video has no frames")
    if result.returncode != 0 or not counts:
        raise UserError(f"{path}: the video is damaged ({ffmpeg_reason(result.stderr)})")
    return int(counts[-1])


def probe(path: str | os.PathLike) -> VideoInfo:
    """Frame count, fps and size without keeping any frames (the count comes from decoding: exact)."""
    path = _check_input(path)
    if path.is_dir():
        info, _ = _iter_folder(path, None)
        return info
    info, reader, _ = _open_ffmpeg(path, None)
    reader.stop()
    return VideoInfo(_count_frames(path), info.fps, info.width, info.height)


# ----------------------------------------------------------------------------------------- model fitting


def crop_box(width: int, height: int, model_width: int, model_height: int, mode: str) -> Crop:
    """The centred box of a frame with the model's aspect ratio ("crop"), or the whole frame ("stretch")."""
    if mode not in FIT_MODES:
        raise UserError(f"fit mode must be one of {', '.join(FIT_MODES)}, got {mode!r}")
    box_w, box_h = width, height
    if mode == "crop":
        if width * model_height > height * model_width:  # wider than the model: trim left and right
            box_w = min(width, max(1, round(height * model_width / model_height)))
        else:
            box_h = min(height, max(1, round(width * model_height / model_width)))
    return Crop(
        mode,
        width,
        height,
        (width - box_w) // 2,
        (height - box_h) // 2,
        box_w,
        box_h,
        model_width,
        model_height,
    )


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")


def _resize(
    frame: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray(frame)
    if box == (0, 0, *image.size) and size == image.size:
        return frame
    # Pillow's bicubic filter widens its support when shrinking, so downscaling is antialiased.
    return np.asarray(image.resize(size, Image.Resampling.BICUBIC, box=box))


def fit_to_model(frames: np.ndarray, height: int, width: int, mode: str = "crop") -> tuple[np.ndarray, Crop]:
    """Frames at the model's size as float32 in [0, 1] `(T, height, width, 3)`, and how they were fitted.

    "crop" keeps the aspect ratio: the centred box with the model's aspect is resized to the model
    size (the bands outside it are not compressed). "stretch" resizes the whole frame, distorting
    the aspect ratio but keeping every part of the picture.
    """
    _check_frames(frames)
    crop = crop_box(frames.shape[2], frames.shape[1], width, height, mode)
    box = (crop.left, crop.top, crop.left + crop.width, crop.top + crop.height)
    out = np.empty((frames.shape[0], height, width, 3), np.float32)
    for t, frame in enumerate(frames):
        np.multiply(_resize(frame, (width, height), box), np.float32(1 / 255), out=out[t])
    return out, crop


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] to uint8 (clipped, rounded); uint8 frames unchanged."""
    if frames.dtype == np.uint8:
        return frames
    return np.rint(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)


def restore_frames(frames: np.ndarray, crop: Crop, *, full_frame: bool = True) -> np.ndarray:
    """Model-size frames (float [0, 1] or uint8) back to the source geometry, as uint8.

    "stretch": resized back to the source width x height. "crop": the crop box is resized back to its
    source size and placed where it was; pixels outside it were never compressed, so with
    `full_frame` (default) the output has the source resolution and aspect with those bands black,
    and without it the output is just the box at source scale. Either way no picture is distorted
    or invented.
    """
    frames = to_uint8(frames)
    _check_frames(frames)
    if frames.shape[1:3] != (crop.model_height, crop.model_width):
        raise ValueError(
            f"frames are {frames.shape[1:3]}, the crop expects {(crop.model_height, crop.model_width)}"
        )
    box = [_resize(f, (crop.width, crop.height), (0, 0, crop.model_width, crop.model_height)) for f in frames]
    region = np.stack(box)
    if not full_frame or (crop.width, crop.height) == (crop.source_width, crop.source_height):
        return region
    out = np.zeros((len(frames), crop.source_height, crop.source_width, 3), np.uint8)
    out[:, crop.top : crop.top + crop.height, crop.left : crop.left + crop.width] = region
    return out


def split_clips(num_frames: int, clip_frames: int = 32, max_len: int = 64) -> list[tuple[int, int]]:
    """`(start, stop)` of consecutive clips covering every frame once; the last may be shorter.

    The short last clip keeps its true length: padding it with invented frames would change what the
    encoder sees (GroupNorm in the decoder mixes statistics across all frames of a clip).
    """
    if num_frames < 1:
        raise UserError(f"a video needs at least one frame, got {num_frames}")
    if not 1 <= clip_frames <= max_len:
        raise UserError(f"clip length must be between 1 and the model's {max_len} frames, got {clip_frames}")
    return [(start, min(start + clip_frames, num_frames)) for start in range(0, num_frames, clip_frames)]


def check_clip_frames(clip_frames: int, max_len: int | None) -> None:
    if not 1 <= clip_frames <= (max_len or clip_frames):
        raise UserError(f"clip length must be between 1 and the model's {max_len} frames, got {clip_frames}")


def fit_clips(
    frames: Iterator[np.ndarray],
    info: VideoInfo,
    clip_frames: int,
    height: int,
    width: int,
    fit: str = "crop",
    *,
    max_len: int | None = None,
    source: str | os.PathLike = "the video",
) -> tuple[Crop, Iterator[tuple[int, np.ndarray]]]:
    """Frames as they arrive (`open_video`) -> how they are fitted, and an iterator of `(start, clip)`.

    Each clip is float32 `(n, height, width, 3)` in [0, 1], `n = clip_frames` except for a shorter last
    clip, which keeps its true length (the clips of `split_clips`). Each frame is fitted as it arrives,
    so only one source frame and one fitted clip are held at a time: memory does not grow with the
    video's length. A bad `clip_frames` fails at once; a video with no frames when the iterator ends.
    """
    check_clip_frames(clip_frames, max_len)
    crop = crop_box(info.width, info.height, width, height, fit)
    box = (crop.left, crop.top, crop.left + crop.width, crop.top + crop.height)

    def clips() -> Iterator[tuple[int, np.ndarray]]:
        buffer = np.empty((clip_frames, height, width, 3), np.float32)
        start = count = 0
        for frame in frames:
            np.multiply(_resize(frame, (width, height), box), np.float32(1 / 255), out=buffer[count])
            count += 1
            if count == clip_frames:
                yield start, buffer.copy()
                start, count = start + count, 0
        if count:
            yield start, buffer[:count].copy()
        elif start == 0:
            raise UserError(f"{source}: the video has no frames")

    return crop, clips()


# ----------------------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it becomes `path`, on any failure it vanishes."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"{path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise UserError(f"{path}: is a folder")
    try:
        with staged_output(path) as tmp:
            yield tmp
    except OSError as err:
        raise UserError(f"{path}: cannot write ({err.strerror or err})") from None


def is_folder_target(path: str | os.PathLike) -> bool:
    text = os.fspath(path)
    return text.endswith(("/", os.sep)) or os.path.isdir(text) or not Path(text).suffix


def _check_video_frames(frames: np.ndarray, fps: float) -> None:
    _check_frames(frames)
    if len(frames) == 0:
        raise ValueError("cannot write a video with no frames")
    if not (math.isfinite(fps) and fps > 0):
        raise UserError(f"fps must be a positive number, got {fps}")


def fps_argument(fps: float) -> str:
    # An exact fraction keeps NTSC rates (30000/1001) exact instead of a rounded decimal.
    return str(Fraction(fps).limit_denominator(100_000))


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float) -> Path:
    """Write uint8 frames `(T, H, W, 3)` at `fps`; the kind follows the path, the size is kept exactly.

    `.mp4 .m4v .mov .mkv` (H.264), `.webm` (VP9), `.avi` (MJPEG), `.gif`, or a folder (a path ending in
    '/' or without a suffix) of `frame_00000.png`... plus `video.json` with the fps. Output appears
    atomically: a failure leaves nothing behind and an existing file untouched. A trailing '/' never
    replaces a file of that name.
    """
    _check_video_frames(frames, fps)
    target = Path(path)
    if is_folder_target(path):
        if target.exists() and not target.is_dir():
            raise UserError(f"{path}: exists and is not a folder; give a video suffix (.mp4) or a new folder")
        if target.is_dir() and any(target.iterdir()):
            raise UserError(f"{path}: folder exists and is not empty; choose a new or empty folder")
    from dfc.video_sink import VideoSink

    with VideoSink(path, frames.shape[2], frames.shape[1], fps) as sink:
        for frame in frames:
            sink.write(frame)
    return target
