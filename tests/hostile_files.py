"""Real files as a careless or hostile user hands them over: damaged safetensors, bad config.json values,
bad shard indexes, crafted `.dfc` files with a valid checksum. Shared by the hostile-input tests."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from common import safetensors_header as framing
from common.config import PRESETS
from dfc.container import (
    ClipLatents,
    CompressedVideo,
    KeepSettings,
    ModelInfo,
    encode_container,
)
from dfc.video import Crop

TINY = PRESETS["vae-tiny"]


def tiny_video(
    weights: str, clips: int = 2, clip_frames: int = 8, side: tuple[int, int] = (40, 30)
) -> CompressedVideo:
    """A valid `CompressedVideo` for the vae-tiny model: one kept latent per clip."""
    rng = np.random.default_rng(0)
    width, height = side
    crop = Crop("stretch", width, height, 0, 0, width, height, TINY.width, TINY.height)
    model = ModelInfo(TINY.height, TINY.width, TINY.num_patches, TINY.latent_dim, weights)
    return CompressedVideo(
        fps=10.0,
        num_frames=clips * clip_frames,
        crop=crop,
        model=model,
        keep=KeepSettings(),
        clips=[
            ClipLatents(
                i * clip_frames,
                clip_frames,
                rng.standard_normal((1, TINY.num_patches, TINY.latent_dim)).astype(np.float32),
                np.zeros(1, np.int32),
            )
            for i in range(clips)
        ],
        clip_frames=clip_frames,
    )


def reseal(data: bytes, *, doc=None, metadata=None) -> bytes:
    """A `.dfc` file's bytes with its description changed by `doc(dict)` and/or its metadata by
    `metadata(dict)`, checksum recomputed: a crafted file that only the content checks can refuse."""
    header, start = framing.parse(data)
    meta = header["__metadata__"]
    if doc is not None:
        described = json.loads(meta["dfc"])
        doc(described)
        meta["dfc"] = json.dumps(described, separators=(",", ":"))
    if metadata is not None:
        metadata(meta)
    meta["dfc.sha256"] = "0" * 64
    prefix = framing.frame(header)
    body = data[start:]
    digest = hashlib.sha256(prefix + body).hexdigest()
    needle = json.dumps({"dfc.sha256": "0" * 64}, separators=(",", ":"))[1:-1].encode()
    return prefix.replace(needle, needle.replace(b"0" * 64, digest.encode()), 1) + body


def encoded(weights: str, **kwargs) -> bytes:
    return encode_container(tiny_video(weights, **kwargs))


def raw_safetensors(header: dict, data: bytes = b"") -> bytes:
    return framing.frame(header) + data


def damaged_safetensors() -> dict[str, bytes]:
    """The damage the issue lists, each as the bytes of a `model.safetensors`."""
    good = raw_safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)
    return {
        "empty file": b"",
        "header longer than the file": struct.pack("<Q", 4096) + b"{}",
        "2^63 header length": struct.pack("<Q", 2**63) + b"{}      ",
        "header not JSON": struct.pack("<Q", 8) + b"\xff" * 8,
        "unknown dtype": raw_safetensors(
            {"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8
        ),
        "overlapping offsets": raw_safetensors(
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
        ),
        "truncated data": good[:-3],
        "10^12 elements": raw_safetensors(
            {"a": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}, b"\0" * 8
        ),
        "negative shape": raw_safetensors(
            {"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8
        ),
        "shape of text": raw_safetensors(
            {"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, b"\0" * 8
        ),
    }


def write_weights_folder(folder: Path, model_bytes: bytes | None, config: dict | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if model_bytes is not None:
        (folder / "model.safetensors").write_bytes(model_bytes)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder
