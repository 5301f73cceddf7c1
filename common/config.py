"""Hyperparameters of the VideoVAE and the VideoDiT: the one place they are written down.

Field names are the constructor keyword arguments of the original training code (MODEL_SPEC section 1),
so `VideoVAE(**asdict(cfg))` and `VideoVAE(cfg)` build the same model in either framework.
The UNet fields are constants of the original code, exposed so that small test models stay small.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar


class ConfigError(ValueError):
    """A configuration that cannot describe a model: one line naming the field and the reason."""


# Sane limits on what a config.json may ask for, checked before any model is built: the published
# models are far inside them (depth 30, widths up to 2048, 256 pixels a side).
MAX_DEPTH = 1024  # encoder_depth, decoder_depth, depth
MAX_WIDTH = 65536  # every feature width, head count and frame length
MAX_SIDE = 8192  # height, width of the model's frames
MAX_CONFIG_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 64  # nesting of a config.json (a flat object is depth 1)
_DEPTH_FIELDS = ("encoder_depth", "decoder_depth", "depth", "unet_num_levels")
# a model without attention blocks is degenerate but well defined (config inference meets it)
_MAY_BE_ZERO = ("encoder_depth", "decoder_depth", "depth")
_SIDE_FIELDS = ("height", "width")


def _limit(name: str) -> int:
    if name in _DEPTH_FIELDS:
        return MAX_DEPTH
    if name in _SIDE_FIELDS:
        return MAX_SIDE
    return MAX_WIDTH


def _check_size(cfg: Any) -> None:
    """After the fields: the model as a whole within `common.model_size.MAX_STATE_VALUES`."""
    from common.model_size import check_model_size  # it imports this module

    check_model_size(cfg)


def _require(ok: bool, why: str, cfg: Any) -> None:
    if not ok:
        raise ConfigError(f"invalid {type(cfg).__name__}: {why} ({cfg})")


@dataclass(frozen=True)
class VAEConfig:
    height: int = 256
    width: int = 256
    channels: int = 3
    patch_size: int = 16
    encoder_depth: int = 9
    decoder_depth: int = 12
    mlp_dim: int = 1536
    num_heads: int = 8
    qkv_features: int = 512
    max_temporal_len: int = 64
    spatial_compression_rate: int = 8
    unembedding_upsample_rate: int = 4
    unet_base_features: int = 16
    unet_num_levels: int = 3
    unet_temporal_kernel: int = 3

    model_type: ClassVar[str] = "vae"

    def __post_init__(self) -> None:
        _check_fields(self)
        _require(self.height % self.patch_size == 0, "height must be a multiple of patch_size", self)
        _require(self.width % self.patch_size == 0, "width must be a multiple of patch_size", self)
        _require(self.qkv_features % self.num_heads == 0, "qkv_features must divide by num_heads", self)
        _require(self.head_dim % 2 == 0, "head_dim must be even (RoPE rotates halves)", self)
        _require(
            self.patch_dim % self.spatial_compression_rate == 0,
            "patch_dim must divide by spatial_compression_rate",
            self,
        )
        _check_size(self)

    @property
    def patch_dim(self) -> int:
        """D: values in one patch, `patch_size**2 * channels` (768 published)."""
        return self.patch_size * self.patch_size * self.channels

    @property
    def latent_dim(self) -> int:
        """Channels of one latent patch, `D / spatial_compression_rate` (96 published)."""
        return self.patch_dim // self.spatial_compression_rate

    @property
    def num_patches(self) -> int:
        """hw: patches per frame, also the spatial RoPE length (256 published)."""
        return (self.height // self.patch_size) * (self.width // self.patch_size)

    @property
    def head_dim(self) -> int:
        return self.qkv_features // self.num_heads

    @property
    def unet_channels(self) -> int:
        """UNet input width: the upsampled video features, `channels * unembedding_upsample_rate`."""
        return self.channels * self.unembedding_upsample_rate

    def block_kwargs(self) -> dict[str, int]:
        """The keyword arguments of each `FactoredAttention` block of this model, in either framework."""
        return block_kwargs(self.patch_dim, self, self.num_patches)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class DiTConfig:
    hw: int = 256
    residual_dim: int = 1024
    compressed_channel_dim: int = 96
    depth: int = 30
    mlp_dim: int = 2048
    num_heads: int = 8
    qkv_features: int = 1024
    max_temporal_len: int = 64

    model_type: ClassVar[str] = "dit"

    def __post_init__(self) -> None:
        _check_fields(self)
        _require(self.qkv_features % self.num_heads == 0, "qkv_features must divide by num_heads", self)
        _require(self.head_dim % 2 == 0, "head_dim must be even (RoPE rotates halves)", self)
        _check_size(self)

    @property
    def head_dim(self) -> int:
        return self.qkv_features // self.num_heads

    def block_kwargs(self) -> dict[str, int]:
        """The keyword arguments of each `FactoredAttention` block of this model, in either framework."""
        return block_kwargs(self.residual_dim, self, self.hw)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **dataclasses.asdict(self)}


def _check_fields(cfg: Any) -> None:
    """Every field a whole number from 1 (0 for a depth) to its limit (bool, float and text are not
    whole numbers)."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(
                f"{type(cfg).__name__}.{f.name} must be a whole number, got {str(value)[:40]!r}"
            )
        value = int(value)
        object.__setattr__(cfg, f.name, value)  # a numpy integer becomes a plain int
        top, bottom = _limit(f.name), 0 if f.name in _MAY_BE_ZERO else 1
        if not bottom <= value <= top:
            raise ConfigError(
                f"{type(cfg).__name__}.{f.name} must be between {bottom} and {top}, got {value}"
            )


def block_kwargs(in_features: int, cfg: VAEConfig | DiTConfig, max_spatial_len: int) -> dict[str, int]:
    """`FactoredAttention(**kwargs)` of a block `in_features` wide in a model of `cfg`: the one statement
    of its argument list (the same names in `jax_ref` and `torch_impl`)."""
    return {
        "in_features": in_features,
        "num_heads": cfg.num_heads,
        "qkv_features": cfg.qkv_features,
        "mlp_dim": cfg.mlp_dim,
        "max_temporal_len": cfg.max_temporal_len,
        "max_spatial_len": max_spatial_len,
    }


AnyConfig = VAEConfig | DiTConfig
C = TypeVar("C", VAEConfig, DiTConfig)

# One preset in a few lines, so that they compare side by side.
# fmt: off
VAE_PRESETS: dict[str, VAEConfig] = {
    # The published model (MODEL_SPEC section 1): 170.6 M parameters.
    "vae-256": VAEConfig(),
    # Tests: every structural feature (several heads, UNet levels, padding) at a size that runs in ms.
    "vae-tiny": VAEConfig(
        height=32, width=32, patch_size=8, encoder_depth=2, decoder_depth=2, mlp_dim=64, num_heads=2,
        qkv_features=32, max_temporal_len=16, unet_base_features=8, unet_num_levels=2,
    ),
    # Demo: small enough to compress a real clip in seconds on 2 cores, big enough to see a picture.
    "vae-small": VAEConfig(
        height=64, width=64, patch_size=8, encoder_depth=2, decoder_depth=2, mlp_dim=256, num_heads=4,
        qkv_features=128, max_temporal_len=64, unet_base_features=8, unet_num_levels=2,
    ),
}
DIT_PRESETS: dict[str, DiTConfig] = {
    "dit-256": DiTConfig(),
    # hw and compressed_channel_dim match vae-tiny / vae-small, so generated latents decode.
    "dit-tiny": DiTConfig(
        hw=16, residual_dim=64, compressed_channel_dim=24, depth=2, mlp_dim=128, num_heads=4,
        qkv_features=64, max_temporal_len=16,
    ),
    "dit-small": DiTConfig(
        hw=64, residual_dim=128, compressed_channel_dim=24, depth=2, mlp_dim=256, num_heads=4,
        qkv_features=128, max_temporal_len=64,
    ),
}
# fmt: on
PRESETS: dict[str, AnyConfig] = {**VAE_PRESETS, **DIT_PRESETS}

_BY_TYPE: dict[str, type] = {"vae": VAEConfig, "dit": DiTConfig}


def config_from_dict(data: dict[str, Any], cls: type[C] | None = None) -> C:
    """Build a config from a dict (as in `config.json`); unknown keys are an error that names them.

    Values must be JSON whole numbers within the limits above: a depth of 2.7 (or 2.0, "2", null, a
    list, 0, -1, 10**9) is a `ConfigError`, never silently rounded or tried."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
    data = dict(data)
    model_type = data.pop("model_type", None)
    if cls is None:
        if not isinstance(model_type, str) or model_type not in _BY_TYPE:
            raise ConfigError(f"config 'model_type' must be 'vae' or 'dit', got {str(model_type)[:40]!r}")
        cls = _BY_TYPE[model_type]
    elif model_type is not None and model_type != cls.model_type:
        raise ConfigError(f"config is for model_type {str(model_type)[:40]!r}, expected {cls.model_type!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(str(k)[:60] for k in set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown[:10])}")
    return cls(**data)


def config_from_json(text: str, cls: type[C] | None = None) -> C:
    return config_from_dict(parse_config_json(text), cls)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _json_depth(text: str) -> int:
    """How deeply brackets nest in JSON text (strings skipped): checked before parsing, so that a
    hostile file cannot make the parser recurse without bound."""
    depth = top = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            top = max(top, depth)
        elif ch in "]}":
            depth -= 1
    return top


def parse_config_json(text: str, where: str = "config.json") -> dict[str, Any]:
    """The JSON object of a config.json's text; anything else (not JSON, too deeply nested, NaN, not
    an object) is a one-line `ConfigError`."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{where}: {len(text):,} characters, too long for a config (at most {MAX_CONFIG_BYTES:,})"
        )
    if _json_depth(text) > MAX_JSON_DEPTH:
        raise ConfigError(f"{where}: nested deeper than {MAX_JSON_DEPTH} levels, not a config")
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        raise ConfigError(f"{where}: not JSON ({str(err).splitlines()[0][:80]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a config must be a JSON object, got {type(data).__name__}")
    return data


def read_config_json(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object of a config.json file, read with the bounds of `common.files` (a FIFO, a device
    or a file over `MAX_CONFIG_BYTES` is refused before reading)."""
    from common.files import InputFileError, read_text_bounded

    try:
        text = read_text_bounded(path, MAX_CONFIG_BYTES, what="a config.json")
    except InputFileError as err:
        raise ConfigError(str(err)) from None
    return parse_config_json(text, os.fspath(path))


def config_to_json(cfg: AnyConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=False) + "\n"


def load_config(spec: Any, cls: type[C] | None = None) -> C:
    """A config from a preset name, a JSON file (or a directory holding `config.json`), a dict or a config."""
    if isinstance(spec, VAEConfig | DiTConfig):
        if cls is not None and not isinstance(spec, cls):
            raise TypeError(f"expected a {cls.__name__}, got a {type(spec).__name__}")
        return spec
    if isinstance(spec, dict):
        return config_from_dict(spec, cls)
    if isinstance(spec, str | os.PathLike):
        name = os.fspath(spec)
        if name in PRESETS:
            return load_config(PRESETS[name], cls)
        path = os.path.join(name, "config.json") if os.path.isdir(name) else name
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"no config {name!r}: not a preset ({', '.join(PRESETS)}) and no such JSON file"
            )
        data = read_config_json(path)
        try:
            return config_from_dict(data, cls)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    raise TypeError(f"cannot make a config from {type(spec).__name__}")


def resolve_config(cls: type[C], config: Any, overrides: dict[str, Any]) -> C:
    """Constructor helper: `Model(config)`, `Model(**hyperparameters)` or a config plus overrides."""
    base = cls() if config is None else load_config(config, cls)
    return dataclasses.replace(base, **overrides) if overrides else base
