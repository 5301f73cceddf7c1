"""Rate and distortion of one clip: the `.dfc` file against x264/x265 on the same frames (`evaluate --rd`).

Both codecs get the same input: the clip fitted to the model's size, as uint8 frames. Both are measured
the same way: the bytes of the whole file each writes (a one-clip `.dfc` file, header and checksum
included; a whole `.mp4`), bits per pixel = 8 x bytes / (frames x height x width), and PSNR, SSIM and
MS-SSIM (`dfc.metrics`) of the decoded uint8 frames against the input.

- `.dfc`: one point per top-K budget, latent dtype and latent coding. The clip is encoded once; each
  point's file is made with `encode_container`, read back with `decode_container` and decoded by the
  VAE from what was read, so what is measured is what `compress` + `decompress` produce. Entropy coding
  is lossless, so a coded file decodes to the same frames as its plain twin (checked, then reused).
- x264 / x265: ffmpeg (the binary imageio-ffmpeg ships) at each CRF of a sweep, `BASELINE_ARGS`, read
  back with `dfc.video.read_video`. A codec this ffmpeg lacks gives no points and says so.
"""

from __future__ import annotations

import functools
import math
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfc.container import LATENT_DTYPES, ClipLatents, CompressedVideo, KeepSettings
from dfc.entropy import CODINGS

DEFAULT_CRFS = (18, 24, 30, 36, 42, 51)
BASELINES = ("x264", "x265")
ENCODERS = {"x264": "libx264", "x265": "libx265"}
# what ffmpeg is told besides the CRF and the pixel format (4:2:0; 4:4:4 where a side is odd)
BASELINE_ARGS = {
    "x264": ["-c:v", "libx264", "-preset", "medium"],
    "x265": ["-c:v", "libx265", "-preset", "medium", "-x265-params", "log-level=error", "-tag:v", "hvc1"],
}


@dataclass
class RDPoint:
    clip: str  # the clip's label, "mean" for the mean curve
    codec: str  # "dfc", "x264", "x265"
    setting: str  # "top-4 bf16 zstd", "crf 30"
    bytes: float
    bpp: float
    psnr: float
    ssim: float
    ms_ssim: float
    frames: int
    k: int | None = None  # dfc: the top-K budget asked for (a clip keeps at most its length)
    latent_dtype: str | None = None
    latent_coding: str | None = None
    crf: int | None = None

    @property
    def curve(self) -> str:
        """The curve a point belongs to: the codec, and for .dfc its dtype and coding."""
        return self.codec if self.codec != "dfc" else f"dfc {self.latent_dtype} {self.latent_coding}"


def quality(reference: np.ndarray, decoded: np.ndarray, psnr_only: bool = False) -> dict[str, float]:
    """PSNR, SSIM and MS-SSIM (`psnr_only`: SSIM and MS-SSIM left NaN, for a quick look)."""
    from dfc.metrics import ms_ssim, psnr, ssim

    return {
        "psnr": psnr(reference, decoded),
        "ssim": math.nan if psnr_only else ssim(reference, decoded),
        "ms_ssim": math.nan if psnr_only else ms_ssim(reference, decoded),
    }


def _bpp(size: int, frames: np.ndarray) -> float:
    return 8.0 * size / (frames.shape[0] * frames.shape[1] * frames.shape[2])


def dfc_points(
    vae,
    frames: np.ndarray,
    *,
    label: str,
    crop,
    fps: float,
    weights_id: str,
    topk: Sequence[int],
    dtypes: Sequence[str] = LATENT_DTYPES,
    codings: Sequence[str] = CODINGS,
    batch_size: int = 4,
) -> list[RDPoint]:
    """`.dfc` points of one clip. `frames`: uint8 `(T, h, w, 3)` at the model's size."""
    import torch

    from dfc.codec import model_info
    from dfc.container import decode_container, encode_container
    from dfc.evaluation import decode_keeps
    from dfc.latent_values import stored_values
    from dfc.video import to_uint8
    from torch_impl.selection import pack_kept, select_frames

    length = len(frames)
    device = next(vae.parameters()).device
    video = torch.from_numpy(frames.astype(np.float32) / 255.0)[None].to(device)
    valid = torch.ones(1, length, dtype=torch.bool, device=device)
    with torch.inference_mode():
        mean, _, selection = vae.encoder(video, valid)
    mean = mean[0].float().cpu().numpy()
    prob = selection[0, :, 0].float().cpu()
    model = model_info(vae, weights_id)
    points = []
    for k in topk:
        keep = select_frames(prob[None], valid.cpu(), "topk", k=min(k, length))
        for dtype in dtypes:
            kept, gaps, _ = pack_kept(torch.from_numpy(stored_values(mean, dtype))[None], keep)
            clip = ClipLatents(0, length, kept[0].numpy(), gaps[0].numpy().astype(np.int32))
            decoded_frames, plain_latents = None, None
            for coding in codings:
                cv = CompressedVideo(
                    fps=fps, num_frames=length, crop=crop, model=model, keep=KeepSettings("topk", k=k),
                    clips=[clip], clip_frames=length, latent_dtype=dtype, latent_coding=coding,
                )  # fmt: skip
                data = encode_container(cv)
                back = decode_container(data).clips[0]
                if decoded_frames is None:
                    full = np.zeros_like(mean)
                    full[back.positions()] = back.latents
                    mask = np.zeros((1, length), bool)
                    mask[0, back.positions()] = True
                    decoded = decode_keeps(vae, full, torch.from_numpy(mask), batch_size)[0]
                    decoded_frames, plain_latents = to_uint8(decoded), back.latents
                elif not np.array_equal(back.latents, plain_latents):
                    raise AssertionError(f"{coding} coding changed the latents of {label}")  # it is lossless
                points.append(
                    RDPoint(
                        label,
                        "dfc",
                        f"top-{k} {dtype} {coding}",
                        len(data),
                        _bpp(len(data), frames),
                        **quality(frames, decoded_frames),
                        frames=length,
                        k=k,
                        latent_dtype=dtype,
                        latent_coding=coding,
                    )  # fmt: skip
                )
    return points


@functools.cache
def ffmpeg_facts() -> tuple[str, str, frozenset[str]]:
    """The path of imageio-ffmpeg's ffmpeg, its version line and the video encoders it has."""
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    version = subprocess.run([exe, "-version"], capture_output=True, text=True).stdout.splitlines()[0]
    listing = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    encoders = frozenset(line.split()[1] for line in listing.splitlines() if line.startswith(" V"))
    return exe, version, encoders


def missing_baselines(baselines: Sequence[str]) -> list[str]:
    _, _, encoders = ffmpeg_facts()
    return [name for name in baselines if ENCODERS[name] not in encoders]


def encoder_args(codec: str, crf: int, width: int, height: int) -> list[str]:
    pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    return [*BASELINE_ARGS[codec], "-crf", str(crf), "-pix_fmt", pix_fmt]


def baseline_points(
    frames: np.ndarray,
    *,
    label: str,
    fps: float,
    codec: str,
    crfs: Sequence[int] = DEFAULT_CRFS,
    psnr_only: bool = False,
) -> list[RDPoint]:
    """Points of one clip for `codec` ("x264"/"x265") at each CRF; none when this ffmpeg lacks it."""
    from dfc.video import read_video

    if missing_baselines([codec]):
        return []
    exe = ffmpeg_facts()[0]
    length, height, width, _ = frames.shape
    points = []
    with tempfile.TemporaryDirectory(prefix="dfc-rd-") as folder:
        for crf in crfs:
            path = Path(folder) / f"{codec}_crf{crf}.mp4"
            command = [exe, "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24"]
            command += ["-s", f"{width}x{height}", "-framerate", f"{fps:g}", "-i", "-"]
            command += [*encoder_args(codec, crf, width, height), "-an", str(path)]
            run = subprocess.run(command, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
            if run.returncode != 0:
                message = run.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
                raise RuntimeError(f"ffmpeg {codec} at CRF {crf} failed: {message[0]}")
            decoded, _ = read_video(path)
            if decoded.shape != frames.shape:
                raise RuntimeError(f"{codec} at CRF {crf} decoded to {decoded.shape}, not {frames.shape}")
            size = path.stat().st_size
            points.append(
                RDPoint(
                    label,
                    codec,
                    f"crf {crf}",
                    size,
                    _bpp(size, frames),
                    **quality(frames, decoded, psnr_only),
                    frames=length,
                    crf=crf,
                )  # fmt: skip
            )
    return points
