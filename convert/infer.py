"""The configuration a checkpoint was trained with, read off its tensor shapes; and the check of a given one.

Each model has a table of facts: "this axis of every tensor matching this pattern is that quantity" (a
config field such as `mlp_dim`, or a config property such as `head_dim`), "the number of blocks under this
list is that depth", and config fields derived from facts. Inference reads every fact from the tensors and
derives the config; checking a given config compares each fact with the config's value, tensor by tensor,
so a disagreement names the tensor. Names are dotted Flax names (`convert.tables`), so a PyTorch state dict
is first mapped through the model's table (`flax_shapes`). Needs numpy only.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from common.config import DiTConfig, VAEConfig
from convert.tables import Table


class ConfigMismatch(ValueError):
    """The tensors contradict the configuration (or each other); the message names the tensor."""


@dataclass(frozen=True)
class Axis:
    """`quantity` is axis `axis` of every tensor matching `pattern`, divided by `divide_by`."""

    quantity: str
    pattern: str
    axis: int
    divide_by: int = 1
    required: bool = True  # RoPE caches are absent from PyTorch files


@dataclass(frozen=True)
class Count:
    """`quantity` is the number of list entries `<prefix>.<i>.` (indices 0..n-1, none missing)."""

    quantity: str
    prefix: str


@dataclass(frozen=True)
class Derived:
    """A config field computed from facts; `None` when the facts do not determine it."""

    quantity: str
    compute: Callable[[dict[str, int]], int | None]
    why: str


@dataclass(frozen=True)
class InferenceTable:
    model_type: str
    config_class: type
    marker: str  # a Flax name only this model has
    facts: tuple[Axis | Count, ...]
    derived: tuple[Derived, ...]


def _exact_root(value: int) -> int | None:
    root = math.isqrt(value)
    return root if root * root == value else None


def _vae_patch_size(f: dict[str, int]) -> int | None:
    per_channel, rest = divmod(f["patch_dim"], f["channels"])
    return None if rest else _exact_root(per_channel)


def _vae_side(f: dict[str, int]) -> int | None:
    # Only the patch count is stored (hw = (H/p)(W/p)); square frames are the published and only
    # trained case, so a non-square count needs --config.
    grid = _exact_root(f["num_patches"])
    patch = _vae_patch_size(f)
    return None if grid is None or patch is None else grid * patch


_ATTENTION_FACTS = (
    Axis("qkv_features", "*Attention.qkv_projection.kernel", 1, divide_by=3),
    Axis("head_dim", "*Attention.q_norm.scale", 0),
    Axis("head_dim", "*Attention.k_norm.scale", 0),
    Axis("mlp_dim", "*MLP.linear1.kernel", 1),
    Axis("max_temporal_len", "*TemporalAttention.ROPE.cos_cached", 1, required=False),
    Axis("max_temporal_len", "*TemporalAttention.ROPE.sin_cached", 1, required=False),
    Axis("head_dim", "*ROPE.cos_cached", 3, required=False),
)
_HEADS = Derived("num_heads", lambda f: f["qkv_features"] // f["head_dim"], "qkv_features / head_dim")

VAE_INFERENCE = InferenceTable(
    model_type="vae",
    config_class=VAEConfig,
    marker="fill_token",
    facts=(
        Count("encoder_depth", "encoder.layers"),
        Count("decoder_depth", "decoder.layers"),
        Count("unet_num_levels", "decoder.unet.encoders"),
        Axis("patch_dim", "encoder.patch_embedding.norm.scale", 0),
        Axis("patch_dim", "*layers.*.input_norm.scale", 0),
        Axis("latent_dim", "fill_token", 3),
        Axis("latent_dim", "encoder.spatial_compression.kernel", 1),
        Axis("num_patches", "encoder.selection_layer2.kernel", 0),
        Axis("num_patches", "*SpatialAttention.ROPE.cos_cached", 1, required=False),
        Axis("channels", "decoder.unet.final_conv.kernel", 4),
        Axis("unet_channels", "decoder.unet.patch_mixer.kernel", 3),
        Axis("unet_base_features", "decoder.unet.encoders.0.conv1.conv.kernel", 4),
        Axis("unet_temporal_kernel", "decoder.unet.patch_mixer.kernel", 0),
        Axis("unet_temporal_kernel", "decoder.unet.*.conv.kernel", 0),
        *_ATTENTION_FACTS,
    ),
    derived=(
        _HEADS,
        Derived("patch_size", _vae_patch_size, "sqrt(patch_dim / channels)"),
        Derived("height", _vae_side, "sqrt(patches per frame) * patch_size (square frames)"),
        Derived("width", _vae_side, "sqrt(patches per frame) * patch_size (square frames)"),
        Derived(
            "spatial_compression_rate", lambda f: f["patch_dim"] // f["latent_dim"], "patch_dim / latent_dim"
        ),
        Derived(
            "unembedding_upsample_rate",
            lambda f: f["unet_channels"] // f["channels"],
            "unet channels / channels",
        ),
    ),
)

DIT_INFERENCE = InferenceTable(
    model_type="dit",
    config_class=DiTConfig,
    marker="up_proj.kernel",
    facts=(
        Count("depth", "layers"),
        Axis("residual_dim", "up_proj.kernel", 1),
        Axis("compressed_channel_dim", "up_proj.kernel", 0),
        Axis("hw", "spacing_pred2.kernel", 0),
        Axis("hw", "*SpatialAttention.ROPE.cos_cached", 1, required=False),
        *_ATTENTION_FACTS,
    ),
    derived=(_HEADS,),
)

INFERENCE: dict[str, InferenceTable] = {"vae": VAE_INFERENCE, "dit": DIT_INFERENCE}


@dataclass(frozen=True)
class Inferred:
    config: VAEConfig | DiTConfig
    sources: dict[str, str]
    """Config field -> where it came from (a tensor name, a count, a derivation)."""
    assumed: dict[str, str]
    """Config field -> why the default was taken (the tensors do not determine it)."""


def flax_shapes(table: Table, torch_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """PyTorch state-dict shapes -> the Flax names and shapes they come from (RoPE caches are absent)."""
    out = {}
    for key, shape in torch_shapes.items():
        kind = table.kind_of_torch(key)
        out[kind.flax_name(key)] = kind.flax_shape(tuple(shape))
    return out


def detect_model_type(names) -> str | None:
    found = [t.model_type for t in INFERENCE.values() if t.marker in names]
    return found[0] if len(found) == 1 else None


def _matches(pattern: str, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    if "*" not in pattern:
        return [pattern] if pattern in shapes else []
    return sorted(name for name in shapes if fnmatch.fnmatchcase(name, pattern))


def _axis_value(rule: Axis, name: str, shape: tuple[int, ...]) -> int:
    if len(shape) <= rule.axis:
        raise ConfigMismatch(f"{name} has shape {list(shape)}: expected at least {rule.axis + 1} dims")
    value, rest = divmod(shape[rule.axis], rule.divide_by)
    if rest:
        raise ConfigMismatch(
            f"{name} has shape {list(shape)}: axis {rule.axis} must divide by {rule.divide_by}"
        )
    return value


def _indices(prefix: str, shapes: Mapping[str, tuple[int, ...]]) -> dict[int, str]:
    """List index -> one tensor name under it."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    found: dict[int, str] = {}
    for name in sorted(shapes):
        m = pattern.match(name)
        if m:
            found.setdefault(int(m.group(1)), name)
    return found


def _count(rule: Count, shapes: Mapping[str, tuple[int, ...]]) -> int:
    indices = _indices(rule.prefix, shapes)
    n = max(indices) + 1 if indices else 0
    missing = [i for i in range(n) if i not in indices]
    if missing:
        raise ConfigMismatch(f"{rule.prefix}.{missing[0]}.* is missing, but {rule.prefix}.{n - 1}.* is there")
    return n


def read_facts(table: InferenceTable, shapes: Mapping[str, tuple[int, ...]]) -> tuple[dict[str, int], dict]:
    """Every fact the tensors state, checked for consistency between tensors, and where each came from."""
    facts: dict[str, int] = {}
    source: dict[str, str] = {}
    for rule in table.facts:
        if isinstance(rule, Count):
            facts[rule.quantity] = _count(rule, shapes)
            source[rule.quantity] = f"count of {rule.prefix}.<i>"
            continue
        names = _matches(rule.pattern, shapes)
        if not names:
            if rule.required:
                raise ConfigMismatch(
                    f"{rule.pattern}: no such tensor (is this a {table.model_type.upper()}?)"
                )
            continue
        for name in names:
            value = _axis_value(rule, name, shapes[name])
            if rule.quantity not in facts:
                facts[rule.quantity], source[rule.quantity] = value, name
            elif facts[rule.quantity] != value:
                raise ConfigMismatch(
                    f"{name} has shape {list(shapes[name])}, giving {rule.quantity} = {value}, but "
                    f"{source[rule.quantity]} gives {facts[rule.quantity]}"
                )
    return facts, source


def infer_config(
    model_type: str, shapes: Mapping[str, tuple[int, ...]], defaults: VAEConfig | DiTConfig | None = None
) -> Inferred:
    """The configuration these Flax-named shapes were built with.

    Fields the tensors do not determine (`max_temporal_len` without RoPE caches; height and width of
    non-square frames) come from `defaults` (the published configuration if None) and are listed in
    `Inferred.assumed`.
    """
    table = INFERENCE[model_type]
    defaults = defaults or table.config_class()
    facts, sources = read_facts(table, shapes)
    for rule in table.derived:
        value = rule.compute(facts)
        if value is not None:
            facts[rule.quantity] = value
            sources[rule.quantity] = rule.why
    fields = {}
    assumed = {}
    for field in dataclasses.fields(table.config_class):
        if field.name in facts:
            fields[field.name] = facts[field.name]
        else:
            fields[field.name] = getattr(defaults, field.name)
            assumed[field.name] = "not stored in the tensors"
    hint = f"; {', '.join(assumed)} cannot be read from the tensors: pass --config" if assumed else ""
    try:
        config = table.config_class(**fields)
        check_config(config, shapes)
    except (ValueError, ConfigMismatch) as err:
        raise ConfigMismatch(f"the tensor shapes give no valid configuration: {err}{hint}") from None
    return Inferred(config, {k: v for k, v in sources.items() if k in fields}, assumed)


def check_config(config: VAEConfig | DiTConfig, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise ConfigMismatch naming the first tensor whose shape contradicts `config`."""
    table = INFERENCE[config.model_type]
    for rule in table.facts:
        expected = getattr(config, rule.quantity)
        if isinstance(rule, Count):
            indices = _indices(rule.prefix, shapes)
            extra = sorted(i for i in indices if i >= expected)
            if extra:
                raise ConfigMismatch(
                    f"{indices[extra[0]]} is in the checkpoint, but the configuration's "
                    f"{rule.quantity} is {expected} (blocks {rule.prefix}.0..{expected - 1})"
                )
            missing = [i for i in range(expected) if i not in indices]
            if missing:
                raise ConfigMismatch(
                    f"{rule.prefix}.{missing[0]}.* is missing, but the configuration's {rule.quantity} "
                    f"is {expected} (the checkpoint has {len(indices)})"
                )
            continue
        for name in _matches(rule.pattern, shapes):
            value = _axis_value(rule, name, shapes[name])
            if value != expected:
                scaled = f" / {rule.divide_by}" if rule.divide_by != 1 else ""
                raise ConfigMismatch(
                    f"{name} has shape {list(shapes[name])}: axis {rule.axis}{scaled} is {value}, but the "
                    f"configuration's {rule.quantity} is {expected}"
                )
