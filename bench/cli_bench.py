"""`dfc compress` / `dfc decompress` from the command line, cold, beside the model time they contain.

For a 32-frame 256x256 clip (an ffmpeg-encoded mp4 made here): the wall time of each command in a fresh
process (interpreter start, imports, weight loading, video decoding and encoding included; page cache
warm), the time of the model call inside it measured in this process on the same frames, and the
packing/unpacking around the model (frame selection and packing of the kept latents, the `.dfc`
container's encoding and decoding, placing latents back with `fill_token`) against that model time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import median, timed

CLIP_FRAMES = 32


def make_clip(path: Path, frames: int, size: int) -> None:
    """A moving gradient with a square: something ffmpeg encodes as a real H.264 clip."""
    from dfc.video import write_video

    t = np.arange(frames)[:, None, None]
    y, x = np.mgrid[0:size, 0:size]
    video = np.zeros((frames, size, size, 3), np.uint8)
    video[..., 0] = (x[None] + 4 * t) % 256
    video[..., 1] = (y[None] + 2 * t) % 256
    video[..., 2] = 128
    for i in range(frames):
        top = (8 * i) % (size - 48)
        video[i, top : top + 48, top : top + 48] = 255
    write_video(path, video, fps=24.0)


def _dfc(*args: str) -> float:
    """Wall time of one `dfc` command in a fresh process."""
    command = [sys.executable, "-m", "dfc.cli", *args]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:1])} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return wall


def cli_rows(weights: Path, precisions: list[str], target_s: float, runs: int = 3) -> list[dict]:
    """One row per precision: cold compress/decompress wall times and the model/packing times inside."""
    from common.config import load_config

    frames = min(CLIP_FRAMES, load_config(str(weights.parent / "config.json")).max_temporal_len)
    scratch = Path(tempfile.mkdtemp(prefix="dfc-cli-bench-"))
    try:
        clip = scratch / "clip.mp4"
        make_clip(clip, frames, 256)
        return [_row(weights.parent, clip, precision, target_s, runs, scratch) for precision in precisions]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _row(folder: Path, clip: Path, precision: str, target_s: float, runs: int, scratch: Path) -> dict:
    import torch

    import torch_impl
    from dfc import container
    from dfc.codec import compress_video
    from dfc.video import fit_to_model, read_video
    from torch_impl.selection import pack_kept, place_kept, select_frames

    vae = torch_impl.load_vae(folder, precision=precision)
    frames, _ = read_video(clip)
    fitted, _ = fit_to_model(frames, vae.config.height, vae.config.width, "crop")
    video = torch.from_numpy(np.ascontiguousarray(fitted[None]))
    mask = torch.ones(video.shape[:2], dtype=torch.bool)
    with torch.inference_mode():
        encode = timed(lambda: vae.encoder(video, mask), target_s, max_runs=3)
        mean, _, selection = vae.encoder(video, mask)
        keep = lambda: select_frames(selection[..., 0], mask, "threshold")  # noqa: E731
        pack = timed(lambda: pack_kept(mean, keep()), target_s / 4)
        packed = vae.compress(video, mask)
        decode = timed(lambda: vae.decompress(packed), target_s, max_runs=3)
        place = timed(
            lambda: place_kept(*packed[:3], packed.num_frames, vae.fill_token),
            target_s / 4,
        )
    cv = compress_video(vae, frames, weights_id="bench", fps=24.0, clip_frames=len(fitted))
    blob = container.encode_container(cv)
    encode_file = timed(lambda: container.encode_container(cv), target_s / 4)
    # reading, then every clip's latents decoded (as decompress does, clip by clip)
    decode_file = timed(
        lambda: [clip.latents for clip in container.decode_container(blob).clips], target_s / 4
    )

    compressed, out = scratch / f"{precision}.dfc", scratch / f"{precision}.mp4"
    flags = ["--weights", str(folder), "--device", "cpu", "--precision", precision, "--force", "--quiet"]
    compress_s = median([_dfc("compress", str(clip), str(compressed), *flags) for _ in range(runs)])
    decompress_s = median([_dfc("decompress", str(compressed), str(out), *flags) for _ in range(runs)])
    pack_s = pack["median_s"] + encode_file["median_s"]
    unpack_s = decode_file["median_s"] + place["median_s"]
    return {
        "precision": precision,
        "frames": len(fitted),
        "compress_cli_s": compress_s,
        "decompress_cli_s": decompress_s,
        "encode_model_s": encode["median_s"],
        "decode_model_s": decode["median_s"],
        "compress_over_model": compress_s / encode["median_s"],
        "decompress_over_model": decompress_s / decode["median_s"],
        "pack_s": pack_s,
        "unpack_s": unpack_s,
        "pack_share_of_compress": pack_s / compress_s,
        "unpack_share_of_decompress": unpack_s / decompress_s,
        "container_bytes": len(blob),
        "runs": runs,
    }
