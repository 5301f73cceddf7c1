"""The VAE and the DiT (and one FactoredAttention block) as parity subjects: jax_ref against torch_impl.

What only these models need lives here, not in the parity core: the flax-era norm numerics as the
variants of the JAX bf16 run (`common.precision.NormNumerics`), the `mixed` torch policy
(`torch_impl.precision`), the UNet's channels-first activations, RoPE caches recomputed after loading, and
the fast abstract random initialisation of `jax_ref`.
"""

from __future__ import annotations

from common.config import DiTConfig, VAEConfig
from common.precision import NormNumerics, Precision
from common.rope import rope_tables
from common.tables import DIT_TABLE, ROPE_LEAVES, VAE_TABLE
from parity.suite import Subject

# torch_impl's UNet runs its convolutions on (B, C, T, H, W); its own input and output are channels last.
VAE_CHANNELS_FIRST = ("*unet.*",)
VARIANTS = tuple(n.value for n in NormNumerics)
# The flax-era numerics each torch policy is built to reproduce (common.precision); the verdict of a
# bf16 run is against this pairing unless another judge is asked for. The report measures both.
NATURAL_NUMERICS = {Precision.BF16: NormNumerics.FLAX_0_12_1, Precision.MIXED: NormNumerics.FLAX_0_10}


def _jax_kwargs(dtype, variant) -> dict:
    import jax.numpy as jnp
    from flax import nnx

    numerics = NormNumerics.parse(variant)
    return dict(rngs=nnx.Rngs(0), dtype=dtype, param_dtype=jnp.float32, norm_numerics=numerics)


def _cast(model, precision: str):
    from torch_impl.precision import apply_precision

    return apply_precision(model, Precision.parse(precision))


def _reset_caches(model) -> None:
    """RoPE caches are buffers computed from the configuration, not weights: recompute them."""
    for module in model.modules():
        if hasattr(module, "reset_caches"):
            module.reset_caches()


def _fill_rope_caches(module) -> None:
    """RoPE caches are a pure function of their shape `(1, max_len, 1, head_dim)`."""
    import jax
    import jax.numpy as jnp

    from jax_ref.compat import get_value, set_value
    from jax_ref.params import variables

    for name, var in variables(module):
        leaf = name.rpartition(".")[2]
        if leaf in ROPE_LEAVES and not isinstance(get_value(var), jax.Array):
            _, max_len, _, head_dim = get_value(var).shape
            cos, sin = rope_tables(max_len, head_dim)
            set_value(var, jnp.asarray(cos if leaf == "cos_cached" else sin))


def _random_weights(build_jax):
    """Seeded random fp32 leaves, built abstractly (`nnx.eval_shape`: no initialiser runs, which in eager
    JAX would compile one kernel per shape): every Param random, true RoPE caches."""

    def init(seed: int):
        import jax.numpy as jnp
        from flax import nnx

        from jax_ref.params import randomize, state_to_flat

        module = nnx.eval_shape(lambda: build_jax(jnp.float32, VARIANTS[0]))
        randomize(module, seed)
        _fill_rope_caches(module)
        return state_to_flat(module)

    return init


def _subject(name, cfg, table, prefix, build_jax, build_torch, channels_first=()) -> Subject:
    return Subject(
        name=name,
        build_jax=build_jax,
        build_torch=build_torch,
        table=table,
        prefix=prefix,
        config=cfg,
        channels_first=channels_first,
        variants=VARIANTS,
        natural={p.value: n.value for p, n in NATURAL_NUMERICS.items()},
        precisions=tuple(p.value for p in Precision),
        cast_torch=_cast,
        prepare_torch=_reset_caches,
        init_weights=_random_weights(build_jax),
    )


def _check_fits_memory(cfg: VAEConfig | DiTConfig) -> None:
    """Both frameworks hold a float32 copy of the weights: refuse a model this machine cannot hold twice."""
    from common.model_size import check_fits_memory

    check_fits_memory(cfg, 4, copies=2, what=f"parity of this {cfg.model_type.upper()} in JAX and torch")


def vae_subject(cfg: VAEConfig) -> Subject:
    def build_jax(dtype, variant):
        import jax_ref

        _check_fits_memory(cfg)

        return jax_ref.VideoVAE(cfg, **_jax_kwargs(dtype, variant))

    def build_torch():
        import torch_impl

        return torch_impl.VideoVAE(cfg)

    return _subject("vae", cfg, VAE_TABLE, "", build_jax, build_torch, VAE_CHANNELS_FIRST)


def dit_subject(cfg: DiTConfig) -> Subject:
    def build_jax(dtype, variant):
        import jax_ref

        _check_fits_memory(cfg)

        return jax_ref.VideoDiT(cfg, **_jax_kwargs(dtype, variant))

    def build_torch():
        import torch_impl

        return torch_impl.VideoDiT(cfg)

    return _subject("dit", cfg, DIT_TABLE, "", build_jax, build_torch)


def block_subject(cfg: VAEConfig | DiTConfig) -> Subject:
    """One FactoredAttention block at the width of `cfg`, converted as the model's first block."""
    kwargs = cfg.block_kwargs()
    is_vae = isinstance(cfg, VAEConfig)

    def build_jax(dtype, variant):
        import jax_ref

        return jax_ref.FactoredAttention(**kwargs, **_jax_kwargs(dtype, variant))

    def build_torch():
        import torch_impl

        return torch_impl.FactoredAttention(**kwargs)

    table, prefix = (VAE_TABLE, "encoder.layers.0.") if is_vae else (DIT_TABLE, "layers.0.")
    return _subject(f"{'vae' if is_vae else 'dit'}-block", cfg, table, prefix, build_jax, build_torch)


def block_width(cfg: VAEConfig | DiTConfig) -> int:
    return cfg.block_kwargs()["in_features"]


def unet_subject(cfg: VAEConfig) -> Subject:
    """The VAE decoder's 3D UNet on its own, converted as `decoder.unet.` of the VAE table."""
    args = (cfg.unet_channels, cfg.channels, cfg.unet_base_features, cfg.unet_num_levels)
    args += (cfg.unet_temporal_kernel,)

    def build_jax(dtype, variant):
        import jax_ref

        return jax_ref.UNet(*args, **_jax_kwargs(dtype, variant))

    def build_torch():
        import torch_impl

        return torch_impl.UNet(*args)

    # every submodule holds (B, C, T, H, W); the UNet's own input and output are channels last
    return _subject("unet", cfg, VAE_TABLE, "decoder.unet.", build_jax, build_torch, ("?*",))
