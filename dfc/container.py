"""The `.dfc` file: one compressed video, as a safetensors file that describes itself (docs/FORMAT.md).

Only the kept latent frames are stored (bf16 by default, float32 or 8-bit optional), with their gaps;
everything needed to rebuild the video - clip layout, frame rate, original size and crop, model size,
keep settings, weights identity - is one JSON document in the safetensors metadata. No pickle: reading
a file never runs code. A SHA-256 over the whole file (with its own digest zeroed) makes any damage,
down to one flipped byte, a clear error instead of a garbled video.

Neither side holds a whole video: reading checks everything but keeps per clip only its description,
and `clip.latents` decodes that clip from bounded reads of the open file when asked; writing encodes
clip by clip into a spool beside the output (`dfc/clip_store.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import numbers
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common import safetensors_header as framing
from dfc import __version__, entropy
from dfc.clip_store import (
    DTYPES,
    STORED,
    ClipLatents,
    ClipSpool,
    ContainerError,
    FileBytes,
    MemoryBytes,
    Source,
    StoredLatents,
    check_latent_values,
)
from dfc.entropy import CODINGS, FRAME_HEADER_MAX, EntropyError
from dfc.errors import UserError
from dfc.video import Crop, atomic_output

__all__ = ["ClipLatents", "ClipSpool", "CompressedVideo", "ContainerError", "KeepSettings", "ModelInfo"]

FORMAT_NAME = "dfc-video"
FORMAT_VERSION = 2  # the newest this dfc reads and writes; a file without entropy coding is written as 1
READ_VERSIONS = (1, 2)
SUFFIX = ".dfc"
LATENT_DTYPES = ("bf16", "f32", "u8")
KEEP_MODES = ("threshold", "bernoulli", "topk")
BYTES_PER_VALUE = {"bf16": 2, "f32": 4, "u8": 1}
MAX_SIDE = 8192  # the largest frame side a .dfc may declare (source or model), docs/FORMAT.md

_META_FORMAT, _META_VERSION, _META_DOC, _META_DIGEST = "format", "format_version", "dfc", "dfc.sha256"
_DIGEST_PLACEHOLDER = "0" * 64


@dataclass(frozen=True)
class ModelInfo:
    """The model that made (and must decode) the latents. `weights` is an identity string such as
    `torch_impl.loading.file_identity(files)`; `config` optionally holds the full VAE config dict."""

    height: int
    width: int
    num_patches: int
    latent_dim: int
    weights: str
    config: dict[str, Any] | None = None


@dataclass(frozen=True)
class KeepSettings:
    mode: str = "threshold"
    k: int | None = None
    seed: int | None = None


@dataclass
class CompressedVideo:
    fps: float
    num_frames: int
    crop: Crop
    model: ModelInfo
    keep: KeepSettings
    clips: list[ClipLatents]
    clip_frames: int
    latent_dtype: str = "bf16"
    source_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, JSON-serialisable notes
    latent_coding: str = "none"  # "zstd": lossless entropy coding of the stored latents (dfc/entropy.py)

    @property
    def width(self) -> int:
        return self.crop.source_width

    @property
    def height(self) -> int:
        return self.crop.source_height

    @property
    def kept_frames(self) -> int:
        return sum(clip.kept for clip in self.clips)


# ---------------------------------------------------------------------------------------------- checking


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ContainerError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _check_clip(index: int, clip: ClipLatents, model: ModelInfo) -> None:
    """A clip's description and gaps; its latent values too when they are held in memory (stored ones
    are checked as they are decoded, `StoredLatents.load`)."""
    where = f"clip {index} (frames {clip.start}..{clip.stop - 1})"
    gaps, shape = clip.gaps, clip.latents_shape
    if gaps.ndim != 1 or gaps.dtype != np.int32 or gaps.shape[0] < 1:
        raise ContainerError(f"{where}: gaps must be int32 (K,) with K >= 1, got {gaps.dtype} {gaps.shape}")
    expected = (gaps.shape[0], model.num_patches, model.latent_dim)
    if shape != expected:
        raise ContainerError(f"{where}: latents are {shape}, expected (K, hw, L) = {expected}")
    if gaps[0] < 0 or (gaps[1:] < 1).any():
        raise ContainerError(f"{where}: gaps must be >= 0 first and >= 1 after, got {gaps.tolist()}")
    last = int(np.sum(gaps, dtype=np.int64))
    if last >= clip.num_frames:
        raise ContainerError(
            f"{where}: gaps place a kept frame at {last}, past the clip's {clip.num_frames} frames"
        )
    if clip.stored is None:
        check_latent_values(where, clip.latents)


def check_compressed_video(cv: CompressedVideo) -> None:
    """Every rule a `.dfc` file obeys; raises `ContainerError` naming the first one broken."""
    check_choice("latent_dtype", cv.latent_dtype, LATENT_DTYPES)
    check_choice("latent_coding", cv.latent_coding, CODINGS)
    check_choice("keep mode", cv.keep.mode, KEEP_MODES)
    if not (isinstance(cv.fps, numbers.Real) and math.isfinite(cv.fps) and cv.fps > 0):
        raise ContainerError(f"fps must be a positive number, got {cv.fps!r}")
    if cv.clip_frames < 1 or cv.num_frames < 1:
        raise ContainerError(
            f"num_frames and clip_frames must be >= 1, got {cv.num_frames}, {cv.clip_frames}"
        )
    if cv.keep.k is not None and cv.keep.k < 1:
        raise ContainerError(f"keep k must be at least 1, got {cv.keep.k}")
    model = cv.model
    if min(model.height, model.width, model.num_patches, model.latent_dim) < 1:
        raise ContainerError(f"model sizes must be >= 1: {model}")
    sides = (cv.crop.source_width, cv.crop.source_height, model.width, model.height)
    if max(sides) > MAX_SIDE:
        raise ContainerError(
            f"the video is {cv.crop.source_width}x{cv.crop.source_height} for a {model.width}x{model.height} "
            f"model; this dfc handles at most {MAX_SIDE} pixels a side"
        )
    if (cv.crop.model_height, cv.crop.model_width) != (model.height, model.width):
        raise ContainerError(
            f"crop was made for a {cv.crop.model_width}x{cv.crop.model_height} model, "
            f"the model is {model.width}x{model.height}"
        )
    if not cv.clips:
        raise ContainerError("a compressed video needs at least one clip")
    expected_start = 0
    for index, clip in enumerate(cv.clips):
        if clip.start != expected_start or clip.num_frames < 1:
            raise ContainerError(
                f"clip {index} covers frames {clip.start}..{clip.stop - 1}, expected it to start at "
                f"{expected_start} with at least one frame (clips must tile the video in order)"
            )
        _check_clip(index, clip, model)
        expected_start = clip.stop
    if expected_start != cv.num_frames:
        raise ContainerError(f"clips cover {expected_start} frames, the video has {cv.num_frames}")


def check_weights(cv: CompressedVideo, expected_weights: str) -> None:
    if cv.model.weights != expected_weights:
        raise ContainerError(
            f"compressed with weights {cv.model.weights}, but the loaded weights are {expected_weights}; "
            "decompress with the weights it was compressed with"
        )


# ----------------------------------------------------------------------------------------------- writing


def _document(cv: CompressedVideo) -> dict[str, Any]:
    return {
        "producer": f"dfc {__version__}",
        # int()/float(): numpy scalars are welcome in a CompressedVideo, but not in JSON
        "video": {
            "num_frames": int(cv.num_frames),
            "fps": float(cv.fps),
            "width": cv.width,
            "height": cv.height,
        },
        "fit": dataclasses.asdict(cv.crop),
        "model": dataclasses.asdict(cv.model),
        "keep": dataclasses.asdict(cv.keep),
        "clip_frames": int(cv.clip_frames),
        "latent_dtype": cv.latent_dtype,
        **({"latent_coding": cv.latent_coding} if cv.latent_coding != "none" else {}),
        "clips": [{"start": int(c.start), "num_frames": int(c.num_frames), "kept": c.kept} for c in cv.clips],
        "source_name": cv.source_name,
        "extra": cv.extra,
    }


def _metadata(cv: CompressedVideo) -> dict[str, str]:
    try:
        document = json.dumps(_document(cv), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ContainerError(f"cannot describe the video as JSON: {err}") from None
    return {
        _META_FORMAT: FORMAT_NAME,
        _META_VERSION: "1" if cv.latent_coding == "none" else str(FORMAT_VERSION),
        _META_DOC: document,
        _META_DIGEST: _DIGEST_PLACEHOLDER,
    }


def _emit(out, metadata: dict[str, str], spool: ClipSpool) -> None:
    """Header, then the spooled data copied chunk by chunk, hashed on the way; then the digest is
    written over its placeholder in the header (same length), so nothing is held whole in memory."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for index, table in enumerate(spool.tables):
        for name, dtype, shape, nbytes in table:
            header[f"clip.{index:05d}.{name}"] = {
                "dtype": dtype,
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
    try:
        prefix = framing.frame(header)
    except ValueError as err:  # a video too long for one file: say so rather than write what no reader takes
        raise ContainerError(f"cannot write this video as one .dfc file: {err}") from None
    needle = _digest_field(_DIGEST_PLACEHOLDER)
    at = prefix.index(needle) + needle.index(_DIGEST_PLACEHOLDER.encode())
    digest = hashlib.sha256(prefix)
    start = out.tell()
    out.write(prefix)
    for chunk in spool.chunks():
        digest.update(chunk)
        out.write(chunk)
    out.seek(start + at)
    out.write(digest.hexdigest().encode())
    out.seek(0, io.SEEK_END)


def _spooled(cv: CompressedVideo, spool: ClipSpool | None, folder: Path | None):
    """`spool` when it holds exactly the clips of `cv`, else a new spool of them (closed after use)."""
    if spool is not None and spool.holds(cv.clips, cv.latent_dtype, cv.latent_coding):
        return nullcontext(spool)
    fresh = ClipSpool(cv.latent_dtype, cv.latent_coding, folder)
    try:
        for clip in cv.clips:
            fresh.add(clip)
    except BaseException:
        fresh.close()
        raise
    return fresh


def encode_container(cv: CompressedVideo) -> bytes:
    """The bytes of the `.dfc` file for `cv` (what `write_container` writes), built in memory."""
    check_compressed_video(cv)
    metadata = _metadata(cv)
    out = io.BytesIO()
    with _spooled(cv, None, None) as spool:
        _emit(out, metadata, spool)
    return out.getvalue()


def _digest_field(hex_digest: str) -> bytes:
    return json.dumps({_META_DIGEST: hex_digest}, separators=(",", ":"))[1:-1].encode()


def write_container(path: str | os.PathLike, cv: CompressedVideo, spool: ClipSpool | None = None) -> Path:
    """Write `cv` to `path` atomically (temporary name, fsync, rename): never a half-written file.

    Clips are encoded one at a time into an unnamed temporary file beside `path`, so memory holds one
    clip, never the file. With `spool` (a `ClipSpool` whose `add` gave the clips of `cv`, as `dfc
    compress` makes while encoding), its bytes are written as they are, without encoding them again.
    """
    check_compressed_video(cv)
    metadata = _metadata(cv)
    try:
        with atomic_output(path) as tmp:
            with _spooled(cv, spool, tmp.parent) as used, open(tmp, "wb") as f:
                _emit(f, metadata, used)
                f.flush()
                os.fsync(f.fileno())
    except UserError as err:
        raise ContainerError(str(err)) from None
    return Path(path)


# ----------------------------------------------------------------------------------------------- reading


class _Corrupt(Exception):
    """Internal: the file is damaged; the reader turns it into one ContainerError line."""


def _need(ok: bool, why: str) -> None:
    if not ok:
        raise _Corrupt(why)


_JSON_NAMES = {int: "an integer", str: "text", dict: "an object", list: "a list", (int, float): "a number"}


def _field(mapping: Any, key: str, kind: type | tuple, *, minimum: int | None = None, optional: bool = False):
    """`mapping[key]` after checking its JSON type (and lower bound); a missing optional key is None."""
    _need(isinstance(mapping, dict), f"expected an object holding {key!r}")
    value = mapping.get(key)
    if value is None:
        _need(optional, f"{key!r} is missing")
        return None
    # bool is an int to Python, never to this format
    ok = isinstance(value, kind) and not isinstance(value, bool)
    _need(ok, f"{key!r} is {str(value)[:40]!r}, expected {_JSON_NAMES.get(kind, kind)}")
    if minimum is not None:
        _need(value >= minimum, f"{key!r} is {value}, expected >= {minimum}")
    return value


def _finite(value: int | float, key: str) -> float:
    try:
        number = float(value)
    except OverflowError:  # JSON integers have no size limit
        number = math.inf
    _need(math.isfinite(number), f"{key!r} is not a finite number")
    return number


def _describe_framing(err: framing.HeaderError) -> str:
    return {
        "short": "too short to be a .dfc file",
        "length": "not a .dfc file (no safetensors header)",
        "truncated": f"truncated: the header needs {8 + err.length} bytes, the file has {err.file_size}",
        "json": "not a .dfc file (its header is not JSON)",
        "object": "not a .dfc file (its header is not a JSON object)",
        "values": f"its header holds more than {framing.MAX_HEADER_VALUES:,} JSON values (a .dfc of about "
        "80,000 clips at most)",
    }[err.reason]


def _check_format(header: dict[str, Any]) -> dict[str, str]:
    metadata = header.get("__metadata__")
    name = metadata.get(_META_FORMAT) if isinstance(metadata, dict) else None
    if name != FORMAT_NAME:
        kind = f"whose format is {name!r}" if isinstance(name, str) else "without dfc metadata"
        raise ContainerError(f"not a .dfc video (a safetensors file {kind}, e.g. model weights)")
    _need(all(isinstance(v, str) for v in metadata.values()), "metadata values must be text")
    version = metadata.get(_META_VERSION, "")
    _need(
        version.isascii() and version.isdigit() and len(version) <= 9,
        f"format version {version[:20]!r}{'...' if len(version) > 20 else ''} is not a version number",
    )
    if int(version) not in READ_VERSIONS:
        newer = int(version) > FORMAT_VERSION
        raise ContainerError(
            f"format version {int(version)}: this dfc reads versions {', '.join(map(str, READ_VERSIONS))}"
            + ("; it was written by a newer dfc, upgrade to read it" if newer else "")
        )
    return metadata


def _check_digest(source: Source, header_end: int, metadata: dict[str, str]) -> None:
    """The SHA-256 of the file, read in bounded chunks (never mapped: mapped pages count as the
    process's memory), against the stored one."""
    stored = metadata.get(_META_DIGEST, "")
    _need(len(stored) == 64 and all(c in "0123456789abcdef" for c in stored), "no valid checksum")
    prefix = source.read(0, header_end)
    field_bytes = _digest_field(stored)
    _need(prefix.count(field_bytes) == 1, "checksum field not found where dfc writes it")
    digest = hashlib.sha256(prefix.replace(field_bytes, _digest_field(_DIGEST_PLACEHOLDER), 1))
    for chunk in source.chunks(header_end, source.size):
        digest.update(chunk)
    _need(
        digest.hexdigest() == stored,
        "checksum mismatch: the file was changed or damaged after it was written",
    )


def _table(header: dict[str, Any], source: Source, header_end: int) -> dict[str, framing.Entry]:
    """The tensor entries, after checking that they tile the data exactly (the one tensor-table check
    of `common.safetensors_header`, on the declared sizes: nothing is read or allocated for them)."""
    try:
        return framing.tensor_table(
            header, source.size - header_end, {k: v.itemsize for k, v in DTYPES.items()}
        )
    except framing.TableError as err:
        raise _Corrupt(str(err)) from None


class _Tensors:
    """Reads small tensors (gaps, 8-bit scale and low) of the file being read, by name."""

    def __init__(self, table: dict[str, framing.Entry], source: Source, header_end: int):
        self.table, self.source, self.base = table, source, header_end

    def entry(self, name: str) -> framing.Entry | None:
        return self.table.get(name)

    def array(self, name: str) -> np.ndarray:
        e = self.table[name]
        data = self.source.read(self.base + e.begin, e.nbytes)
        return np.frombuffer(data, DTYPES[e.dtype]).reshape(e.shape)


def _crop_from(doc: dict[str, Any]) -> Crop:
    fit = _field(doc, "fit", dict)
    mode = _field(fit, "mode", str)
    values = {f.name: _field(fit, f.name, int) for f in dataclasses.fields(Crop) if f.name != "mode"}
    try:
        return Crop(mode=mode, **values)
    except ValueError as err:
        raise _Corrupt(str(err)) from None


def _clip_from(
    index: int,
    entry: dict[str, Any],
    tensors: _Tensors,
    latent_dtype: str,
    coding: str,
    model: ModelInfo,
    prefix: str,
) -> ClipLatents:
    """A clip's description, gaps and 8-bit scale/low, checked; its latents stay where they are stored
    (checked up to the zstd frame's declared size), decoded when asked for."""
    name = f"clip.{index:05d}"
    start = _field(entry, "start", int, minimum=0)
    num_frames = _field(entry, "num_frames", int, minimum=1)
    kept = _field(entry, "kept", int, minimum=1)
    code, wanted = STORED[latent_dtype]
    shape = (kept, model.num_patches, model.latent_dim)
    gaps_entry = tensors.entry(f"{name}.gaps")
    stored = tensors.entry(f"{name}.latents" if coding == "none" else f"{name}.latents.{coding}")
    _need(gaps_entry is not None and stored is not None, f"tensors of clip {index} are missing")
    _need(
        gaps_entry.shape == (kept,),
        f"clip {index}: {gaps_entry.shape[0] if gaps_entry.shape else '?'} gaps, {kept} kept frames",
    )
    if coding == "none":
        _need(len(stored.shape) == 3 and stored.shape[0] == kept, f"clip {index}: latents are {stored.shape}")
        _need(stored.dtype == code and gaps_entry.dtype == "I32", f"clip {index}: tensor dtypes disagree")
        shape = stored.shape
    else:
        _need(stored.dtype == "U8" and len(stored.shape) == 1, f"tensors of clip {index} are missing")
        _need(gaps_entry.dtype == "I32", f"clip {index}: tensor dtypes disagree")
        head = tensors.source.read(tensors.base + stored.begin, min(stored.nbytes, FRAME_HEADER_MAX))
        try:
            entropy.check_frame(head, wanted, shape, coding)
        except EntropyError as err:
            raise _Corrupt(f"{name}.latents: {err}") from None
    scale = low = None
    if latent_dtype == "u8":
        found = [tensors.entry(f"{name}.{part}") for part in ("scale", "low")]
        _need(None not in found, f"clip {index}: 8-bit scale or low is missing")
        _need(
            all(e.shape == (shape[2],) and e.dtype == "F32" for e in found),
            f"clip {index}: 8-bit scale/low shapes",
        )
        scale, low = (tensors.array(e.name).astype(np.float32) for e in found)
        _need(bool(np.isfinite(scale).all() and (scale >= 0).all() and np.isfinite(low).all()), "8-bit scale")
    gaps = tensors.array(f"{name}.gaps").astype(np.int32)
    where = f"clip {index} (frames {start}..{start + num_frames - 1})"
    place = StoredLatents(
        tensors.source, tuple(shape), latent_dtype, coding, tensors.base + stored.begin,
        tensors.base + stored.end, scale, low, prefix, where, f"{name}.latents",
    )  # fmt: skip
    return ClipLatents(start=start, num_frames=num_frames, latents=place, gaps=gaps)


def _video_from(doc: Any, tensors: _Tensors, version: int, prefix: str) -> CompressedVideo:
    _need(isinstance(doc, dict), "the description is not a JSON object")
    video = _field(doc, "video", dict)
    model_doc = _field(doc, "model", dict)
    model = ModelInfo(
        height=_field(model_doc, "height", int, minimum=1),
        width=_field(model_doc, "width", int, minimum=1),
        num_patches=_field(model_doc, "num_patches", int, minimum=1),
        latent_dim=_field(model_doc, "latent_dim", int, minimum=1),
        weights=_field(model_doc, "weights", str),
        config=_field(model_doc, "config", dict, optional=True),
    )
    keep_doc = _field(doc, "keep", dict)
    keep = KeepSettings(
        mode=_field(keep_doc, "mode", str),
        k=_field(keep_doc, "k", int, optional=True),
        seed=_field(keep_doc, "seed", int, optional=True),
    )
    latent_dtype = _field(doc, "latent_dtype", str)
    _need(latent_dtype in LATENT_DTYPES, f"unknown latent dtype {latent_dtype!r}")
    coding = _field(doc, "latent_coding", str, optional=True) or "none"
    _need(coding in CODINGS, f"unknown latent coding {coding!r}")
    _need((coding != "none") == (version >= 2), f"format version {version} with latent coding {coding!r}")
    clip_docs = _field(doc, "clips", list)
    clips = [
        _clip_from(i, entry, tensors, latent_dtype, coding, model, prefix)
        for i, entry in enumerate(clip_docs)
    ]
    latents = "latents" if coding == "none" else f"latents.{coding}"
    expected_names = {f"clip.{i:05d}.{part}" for i in range(len(clips)) for part in ("gaps", latents)}
    if latent_dtype == "u8":
        expected_names |= {f"clip.{i:05d}.{part}" for i in range(len(clips)) for part in ("scale", "low")}
    _need(set(tensors.table) == expected_names, "the tensors do not match the clips described")
    cv = CompressedVideo(
        fps=_finite(_field(video, "fps", (int, float)), "fps"),
        num_frames=_field(video, "num_frames", int, minimum=1),
        crop=_crop_from(doc),
        model=model,
        keep=keep,
        clips=clips,
        clip_frames=_field(doc, "clip_frames", int, minimum=1),
        latent_dtype=latent_dtype,
        source_name=_field(doc, "source_name", str, optional=True),
        extra=_field(doc, "extra", dict, optional=True) or {},
        latent_coding=coding,
    )
    _need(
        (video.get("width"), video.get("height")) == (cv.width, cv.height),
        "video size disagrees with the crop",
    )
    return cv


def _open(
    source: Source, header: dict[str, Any], header_end: int, expected_weights: str | None, name: str
) -> CompressedVideo:
    """Every check of docs/FORMAT.md but the latent values (checked as each clip is decoded)."""
    try:
        metadata = _check_format(header)
        table = _table(header, source, header_end)  # before the checksum, to tell truncation apart
        _check_digest(source, header_end, metadata)
        try:
            doc = json.loads(metadata[_META_DOC])
        except (KeyError, ValueError, RecursionError):
            raise _Corrupt("its description is missing or not JSON") from None
        prefix = f"{name}: damaged or not a .dfc file: "
        cv = _video_from(doc, _Tensors(table, source, header_end), int(metadata[_META_VERSION]), prefix)
        check_compressed_video(cv)
    except _Corrupt as err:
        raise ContainerError(f"{name}: damaged or not a .dfc file: {err}") from None
    except ContainerError as err:
        raise ContainerError(f"{name}: {err}") from None
    if expected_weights is not None:
        try:
            check_weights(cv, expected_weights)
        except ContainerError as err:
            raise ContainerError(f"{name}: {err}") from None
    return cv


def decode_container(
    data: bytes, *, expected_weights: str | None = None, name: str = "<bytes>"
) -> CompressedVideo:
    """Parse and check the bytes of a `.dfc` file; every problem is one `ContainerError` line. The
    clips' latents are decoded (and their values checked) each time `clip.latents` is read."""
    try:
        header, header_end = framing.parse(data)
    except framing.HeaderError as err:
        raise ContainerError(f"{name}: damaged or not a .dfc file: {_describe_framing(err)}") from None
    return _open(MemoryBytes(data, name), header, header_end, expected_weights, name)


def read_container(path: str | os.PathLike, *, expected_weights: str | None = None) -> CompressedVideo:
    """Read and check a `.dfc` file. With `expected_weights`, refuse a file made with other weights.

    A FIFO or a device is refused before it is opened; the header is read with bounded reads and its
    format checked first; the checksum is computed over bounded reads. The clips keep their
    descriptions only: `clip.latents` decodes a clip from the open file when asked (and checks its
    values then), so memory does not grow with the number of clips (docs/FORMAT.md)."""
    from common.files import InputFileError, check_regular

    path = Path(path)
    try:
        check_regular(path, what="a .dfc file")
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            try:
                header, header_end = framing.read(f, size)
            except framing.HeaderError as err:
                raise ContainerError(
                    f"{path}: damaged or not a .dfc file: {_describe_framing(err)}"
                ) from None
            source = FileBytes(f.fileno(), size, str(path))
        return _open(source, header, header_end, expected_weights, str(path))
    except InputFileError as err:
        raise ContainerError(str(err)) from None
    except FileNotFoundError:
        raise ContainerError(f"{path}: no such file") from None
    except OSError as err:
        raise ContainerError(f"{path}: cannot read ({err.strerror or err})") from None
