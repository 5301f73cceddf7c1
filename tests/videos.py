"""Real, ffmpeg-encoded test videos, made without the code under test (dfc.video)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import imageio_ffmpeg
import numpy as np

PATTERNS = ("moving", "static", "noise")

# suffix -> ffmpeg arguments; odd sizes cannot be H.264 4:2:0, so those use 4:4:4
_CODECS = {
    ".mp4": ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "10"],
    ".mov": ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "10"],
    ".mkv": ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "10"],
    ".webm": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "0", "-crf", "20"],
    ".avi": ["-c:v", "mjpeg", "-q:v", "2", "-pix_fmt", "yuvj444p"],
    ".gif": ["-filter_complex", "split[a][b];[a]palettegen[p];[b][p]paletteuse"],
}


def synthetic_frames(
    num_frames: int, width: int, height: int, pattern: str = "moving", seed: int = 0
) -> np.ndarray:
    """uint8 `(T, H, W, 3)`: "moving" = a gradient with a bright square crossing it (every frame
    differs), "static" = one picture repeated, "noise" = independent random frames."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}")
    if pattern == "noise":
        return np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
    y, x = np.mgrid[0:height, 0:width]
    background = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), 96 + 0 * x], -1)
    frames = np.repeat(background[None].astype(np.uint8), num_frames, axis=0)
    if pattern == "moving":
        side = max(2, min(width, height) // 4)
        for t in range(num_frames):
            left = (t * 3) % max(1, width - side)
            top = (t * 2) % max(1, height - side)
            frames[t, top : top + side, left : left + side] = (255, 255 - 3 * t % 256, 40)
    return frames


def encode(path: str | Path, frames: np.ndarray, fps: float, options: Sequence[str] = ()) -> Path:
    """Encode uint8 frames with the ffmpeg binary that imageio-ffmpeg ships; the suffix picks the codec,
    `options` are more output options (e.g. `["-movflags", "+faststart"]`)."""
    path = Path(path)
    _, height, width, _ = frames.shape
    codec = list(_CODECS[path.suffix.lower()])
    if path.suffix.lower() in (".mp4", ".mov", ".mkv"):
        codec += ["-pix_fmt", "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"]
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "rawvideo"]
    cmd += [
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-framerate",
        str(fps),
        "-i",
        "-",
        *codec,
        *options,
        str(path),
    ]
    subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), check=True, capture_output=True)
    return path


def make_test_video(
    path: str | Path,
    num_frames: int,
    width: int,
    height: int,
    fps: float = 10,
    pattern: str = "moving",
    options: Sequence[str] = (),
) -> Path:
    """A real video file at `path` (mp4, mov, mkv, webm, avi or gif by suffix), any size, odd included."""
    return encode(path, synthetic_frames(num_frames, width, height, pattern), fps, options)
