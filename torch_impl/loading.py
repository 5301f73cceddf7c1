"""Load a VideoVAE / VideoDiT from a file, a directory or the Hugging Face hub, strictly.

Sources: a `.safetensors` file; a published-format `.pt` (plain `torch.save` of a state dict); a directory
holding `model.safetensors`, or shards plus `model.safetensors.index.json`, or the hub's file name
(`vae_pytorch.pt` / `dit_pytorch.pt`), with an optional `config.json`; or a hub repo id, fetched with
`huggingface_hub.hf_hub_download` (honours HF_HUB_OFFLINE and the local cache).

Configuration: the `config` argument, else a `config.json` beside the weights (when its model_type
fits), else inferred from tensor shapes. A state dict holds no RoPE buffers, so `max_temporal_len`
cannot be read from it and the published value (64) is used; frames are assumed square.

The model is built on the meta device, every tensor is checked against it (a missing, unexpected or
mis-shaped one raises `WeightsError` naming each offender and both shapes), then the file's tensors are
assigned in place (no second copy), the RoPE caches are computed, and the precision policy is applied.

`locate_weights` is the one place a source becomes files: `load_vae`/`load_dit` accept its result, so
a caller that also needs the files (to hash them: `file_identity`, the identity stored in every `.dfc`
file) locates them once.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common import safetensors_header as st_header
from common.config import ConfigError, DiTConfig, VAEConfig, load_config
from common.files import InputFileError, check_regular
from common.hub import DEFAULT_REPO, HUB_FILENAMES
from common.precision import Precision
from common.torch_file import TorchFileError, read_torch_state
from torch_impl.dit import VideoDiT
from torch_impl.layers import ROPE
from torch_impl.precision import apply_precision
from torch_impl.vae import VideoVAE

SAFETENSORS_NAME = "model.safetensors"
INDEX_NAME = st_header.INDEX_NAME
CONFIG_NAME = "config.json"

_CONFIG_CLASSES: dict[str, type] = {"vae": VAEConfig, "dit": DiTConfig}
_MODEL_CLASSES: dict[str, type[nn.Module]] = {"vae": VideoVAE, "dit": VideoDiT}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A missing "dir/file.pt" is a typo'd path, not a repo id: say so instead of asking the hub.
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".json")


class WeightsError(ValueError):
    """Weights that do not fit the model: every missing, unexpected and mis-shaped key is named."""

    def __init__(
        self,
        message: str,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)


class WeightsFileError(WeightsError):
    """A weights file, shard index or config.json that cannot be read as one: damaged, not a regular
    file, or naming files outside its folder. One line naming the file."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """The weights could not be found locally or fetched; the message says how to provide them."""


# --- shapes -----------------------------------------------------------------------------------------


def build_model(config: VAEConfig | DiTConfig, device: torch.device | str | None = None) -> nn.Module:
    """An initialised model of `config`'s type; on `"meta"` it allocates nothing."""
    with torch.device(device or "cpu"):
        return _MODEL_CLASSES[config.model_type](config)


def expected_state_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """`{state-dict key: shape}` of the model for `config` (a config, preset name, path or dict).

    Built on the meta device: nothing is allocated, even at the published size.
    """
    return _state_shapes(build_model(load_config(config), "meta"))


def _state_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(t.shape) for key, t in model.state_dict().items()}


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


SHOWN_PER_KIND = 5  # offenders named per kind; the rest are counted


def _is_float(value: Any) -> bool | None:
    """Whether a tensor or array holds floating-point values; None for a bare shape."""
    if isinstance(value, torch.Tensor):
        return value.is_floating_point()
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return None
    kind = getattr(dtype, "kind", None)
    return kind == "f" or "float" in str(dtype)


def check_state_shapes(
    state: Mapping[str, Any], expected: Mapping[str, Sequence[int]], what: str = "weights"
) -> None:
    """Raise `WeightsError` unless `state` (tensors, arrays or shapes) has `expected`'s keys and shapes,
    and every tensor holds floating-point values (every weight of both models does: an I32 where an
    F32 belongs is an error, not a silent cast). The first line says what is wrong and names the
    first few offenders of each kind, with a count of the rest; the lines after it give the shapes."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(state) & set(expected) if _shape(state[k]) != tuple(expected[k]))
    wrong_dtype = sorted(k for k in set(state) & set(expected) if _is_float(state[k]) is False)
    if not (missing or unexpected or mismatched or wrong_dtype):
        return
    kinds = [
        (missing, "missing"),
        (unexpected, "unexpected"),
        (mismatched, "mis-shaped"),
        (wrong_dtype, "not floating-point"),
    ]
    summary = "; ".join(
        f"{label}: {st_header.preview(keys, SHOWN_PER_KIND)}" for keys, label in kinds if keys
    )
    lines = [
        f"{what} do not fit the model: {len(missing)} missing, {len(unexpected)} unexpected, "
        f"{len(mismatched)} mis-shaped, {len(wrong_dtype)} wrongly typed tensor(s) ({summary})"
    ]
    n = SHOWN_PER_KIND
    lines += [f"  missing:    {k} (model expects {tuple(expected[k])})" for k in missing[:n]]
    lines += [f"  unexpected: {k} (file has {_shape(state[k])})" for k in unexpected[:n]]
    lines += [
        f"  mis-shaped: {k}: file has {_shape(state[k])}, model expects {tuple(expected[k])}"
        for k in mismatched[:n]
    ]
    lines += [
        f"  dtype:      {k}: file has {state[k].dtype}, model expects floating point" for k in wrong_dtype[:n]
    ]
    for keys, label in kinds:
        if len(keys) > n:
            lines.append(f"  ... and {len(keys) - n} more {label}")
    raise WeightsError("\n".join(lines), missing, unexpected, mismatched)


# --- configuration from shapes -----------------------------------------------------------------------


def infer_vae_config(state: Mapping[str, Any]) -> VAEConfig:
    """The VAEConfig whose model has these shapes; `max_temporal_len` is the published default."""
    return _infer("vae", state)


def infer_dit_config(state: Mapping[str, Any]) -> DiTConfig:
    """The DiTConfig whose model has these shapes; `max_temporal_len` is the published default."""
    return _infer("dit", state)


def _infer(model_type: str, state: Mapping[str, Any]) -> Any:
    """Through the model tables (`common.infer`), the one statement of which axis of which
    tensor is which config field; its messages name Flax tensors, so they are said to be."""
    from common.infer import ConfigMismatch, detect_model_type, flax_shapes, infer_config
    from common.tables import TABLES

    names = {"vae": "VAE", "dit": "DiT"}
    what = names[model_type]
    try:
        shapes = flax_shapes(TABLES[model_type], {key: _shape(value) for key, value in state.items()})
    except KeyError as err:  # a key no rule of this model's table knows
        raise WeightsError(
            f"cannot infer the {what} configuration: {err.args[0]} (is this a {what} weight file?); "
            "pass config= explicitly"
        ) from None
    found = detect_model_type(shapes)
    if found != model_type:
        other = f"looks like a {names[found]}" if found else "is neither a VAE nor a DiT"
        raise WeightsError(
            f"cannot infer the {what} configuration: this state dict {other}; pass config= explicitly"
        )
    try:
        return infer_config(model_type, shapes).config
    except ConfigMismatch as err:
        raise WeightsError(f"{err} (Flax names; pass config= explicitly)") from None


_INFER = {"vae": infer_vae_config, "dit": infer_dit_config}


# --- finding and reading the files -------------------------------------------------------------------


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_cache_dir() -> str | None:
    """Read at call time (huggingface_hub reads its constants once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _hub_download(repo_id: str, model_type: str) -> Path:
    from huggingface_hub import constants, hf_hub_download

    filename = HUB_FILENAMES[model_type]
    cache_dir = _hub_cache_dir()
    offline = _env_flag("HF_HUB_OFFLINE")
    try:
        return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir, local_files_only=offline))
    except Exception as err:  # any hub, network or cache failure gets the same advice
        cache = cache_dir or constants.HF_HUB_CACHE
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else f"{type(err).__name__}"
        raise WeightsNotFoundError(
            f"could not get {filename} from the Hugging Face repo {repo_id} ({why}: {err}).\n"
            f"Provide the weights in one of two ways:\n"
            f"  1. pass a local path: load_{model_type}('/path/to/{filename}') - a published-format .pt, a "
            f".safetensors file, or a directory with {SAFETENSORS_NAME} (or shards and {INDEX_NAME}) "
            f"and {CONFIG_NAME};\n"
            f"  2. pre-populate the Hugging Face cache: on a machine with internet run "
            f"`hf download {repo_id} {filename}` (older clients: `huggingface-cli download ...`), copy its "
            f"cache folder to {cache} here (or point HF_HUB_CACHE / HF_HOME at the copy), and load with "
            f"HF_HUB_OFFLINE=1."
        ) from err


@dataclass(frozen=True)
class WeightFiles:
    """Where one model's weights are: the files to read (shards in index order) and the `config.json`
    beside them (or None). `load_vae`/`load_dit` take one in place of a source."""

    source: str
    model_type: str
    files: tuple[Path, ...]
    config: Path | None
    weight_map: Mapping[str, str] | None = None  # the shard index's, for shards


def locate_weights(source: str | os.PathLike = DEFAULT_REPO, model_type: str = "vae") -> WeightFiles:
    """The files `load_vae`/`load_dit` read for `source` (a hub repo id is fetched or found in the cache);
    raises `WeightsNotFoundError` with advice when there are none."""
    files, config, weight_map = _find(source, model_type)
    return WeightFiles(os.fspath(source), model_type, tuple(Path(f) for f in files), config, weight_map)


def _find(source: str | os.PathLike, model_type: str) -> tuple[list[Path], Path | None, Any]:
    """`source` -> (weight files, config.json or None, the index's weight map or None). Shards come
    back in index order, each confined to the folder. FIFOs and devices are refused before opening."""
    path = Path(source)
    if path.exists() and not path.is_dir():
        try:
            check_regular(path, what="a weights file")
        except InputFileError as err:
            raise WeightsFileError(str(err)) from None
    if path.is_file():
        beside = path.parent / CONFIG_NAME
        return [path], beside if beside.is_file() else None, None
    if path.is_dir():
        config = path / CONFIG_NAME if (path / CONFIG_NAME).exists() else None
        if (path / INDEX_NAME).exists():
            try:
                weight_map, shards = st_header.read_index(path)
            except st_header.IndexFileError as err:
                raise (WeightsNotFoundError if err.missing else WeightsFileError)(str(err)) from None
            return shards, config, weight_map
        for name in (SAFETENSORS_NAME, HUB_FILENAMES[model_type]):
            if (path / name).exists():
                return [path / name], config, None
        raise WeightsNotFoundError(
            f"{path}: no {SAFETENSORS_NAME}, {INDEX_NAME} or {HUB_FILENAMES[model_type]} in this directory"
        )
    if isinstance(source, str) and _REPO_ID.match(source) and not source.endswith(_WEIGHT_SUFFIXES):
        return [_hub_download(source, model_type)], None, None
    raise WeightsNotFoundError(
        f"{source}: no such file or directory, and not a Hugging Face repo id (owner/name)"
    )


IDENTITY_HEX_DIGITS = 16
_CHUNK = 1 << 20


def file_identity(files: Sequence[Path]) -> str:
    """Which weights a model came from, as a short stable string stored in every `.dfc` file.

    `sha256:<first 16 hex digits>` of the weight files' bytes - all of them, so two models of the same
    shape but different values never share one (a header-only hash would: safetensors headers hold names
    and shapes, not values). About 0.5 GB/s on one core, 1.3 s for the published 652 MB VAE, against a
    load that reads the same bytes anyway. Shards hash in index order. `config.json` is not part of the
    identity: a config that does not fit the tensors fails to load.
    """
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:IDENTITY_HEX_DIGITS]}"


def weights_identity(source: str | os.PathLike = DEFAULT_REPO, model_type: str = "vae") -> str:
    """`sha256:...` of the weights behind `source`; equal for a file, its directory and a copy of either."""
    return file_identity(locate_weights(source, model_type).files)


def check_safetensors(path: Path) -> dict[str, st_header.Entry]:
    """The tensor table of a safetensors file, checked with bounded reads before the file is loaded:
    a damaged file (empty, a header longer than the file, an absurd header length, an unknown dtype,
    overlapping or missing data, a shape larger than the file) is a one-line `WeightsError`."""
    try:
        table, _, _ = st_header.read_table(path)
    except InputFileError as err:
        raise WeightsFileError(str(err)) from None
    except st_header.HeaderError as err:
        raise WeightsFileError(
            f"{path}: not a readable safetensors file ({st_header.describe(err)})"
        ) from None
    except st_header.TableError as err:
        raise WeightsFileError(f"{path}: damaged safetensors file ({err})") from None
    except OSError as err:
        raise WeightsFileError(f"{path}: cannot read ({err.strerror or err})") from None
    return table


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        check_safetensors(path)
        try:
            return load_file(path)
        except Exception as err:  # the library's own error type; checked above, so rare
            first = (str(err) or type(err).__name__).splitlines()[0]
            raise WeightsFileError(f"{path}: not a readable safetensors file ({first})") from None
    try:  # weights_only, memory-mapped where the format allows: the one legacy .pt reader
        return read_torch_state(path)
    except TorchFileError as err:
        raise WeightsFileError(str(err)) from None


def read_state_dict(
    files: Sequence[Path], weight_map: Mapping[str, str] | None = None, folder: Path | None = None
) -> dict[str, torch.Tensor]:
    """Merge the tensors of one or more weight files; a key in two shards is an error, and with a shard
    index's `weight_map`, so is a tensor it lists that the shard it names does not hold."""
    state: dict[str, torch.Tensor] = {}
    held: dict[str, set[str]] = {}
    for path in files:
        part = _read_file(Path(path))
        twice = sorted(set(part) & set(state))
        if twice:
            raise WeightsError(f"{path}: tensors already read from another shard: {st_header.preview(twice)}")
        state.update(part)
        held[os.path.relpath(path, folder) if folder is not None else Path(path).name] = set(part)
    if weight_map is not None and folder is not None:
        try:
            st_header.check_index_coverage(Path(folder) / INDEX_NAME, dict(weight_map), held)
        except st_header.IndexFileError as err:
            raise WeightsFileError(str(err)) from None
    return state


def _config_beside(path: Path | None, model_type: str) -> Any:
    """The config.json beside the weights, unless it describes the other model."""
    if path is None:
        return None
    from common.config import read_config_json

    try:
        data = read_config_json(path)
    except ConfigError as err:
        raise WeightsFileError(str(err)) from None
    if data.get("model_type", model_type) != model_type:
        return None
    try:
        return load_config(data, _CONFIG_CLASSES[model_type])
    except ConfigError as err:
        raise WeightsFileError(f"{path}: {err}") from None


def _load(model_type: str, source: Any, config: Any, device: Any, precision: Precision | str) -> nn.Module:
    precision = Precision.parse(precision)
    located = source if isinstance(source, WeightFiles) else locate_weights(source, model_type)
    if located.model_type != model_type:
        raise ValueError(f"{located.source}: located as {located.model_type} weights, not {model_type}")
    folder = Path(located.source) if located.weight_map is not None else None
    state = read_state_dict(located.files, located.weight_map, folder)
    if config is not None:
        cfg = load_config(config, _CONFIG_CLASSES[model_type])
    else:
        cfg = _config_beside(located.config, model_type) or _INFER[model_type](state)
    model = build_model(cfg, "meta")
    check_state_shapes(state, _state_shapes(model), what=f"weights from {located.source}")
    model.load_state_dict(state, strict=True, assign=True)
    for module in model.modules():
        if isinstance(module, ROPE):
            module.reset_caches()
    return apply_precision(model, precision).to(device).eval()


def load_vae(
    source: str | os.PathLike | WeightFiles = DEFAULT_REPO,
    config: Any = None,
    device: torch.device | str = "cpu",
    precision: Precision | str = "fp32",
) -> VideoVAE:
    """A VideoVAE in eval mode from `source` (file, directory, hub repo id or `locate_weights`'s result)."""
    return _load("vae", source, config, device, precision)


def load_dit(
    source: str | os.PathLike | WeightFiles = DEFAULT_REPO,
    config: Any = None,
    device: torch.device | str = "cpu",
    precision: Precision | str = "fp32",
) -> VideoDiT:
    """A VideoDiT in eval mode from `source` (file, directory, hub repo id or `locate_weights`'s result)."""
    return _load("dit", source, config, device, precision)
