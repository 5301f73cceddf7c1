"""The video VAE: encoder, decoder, and the frame-dropping compression around them (MODEL_SPEC 3, 4).

Shapes use the one legend of docs/ARCHITECTURE.md: B batch, T frames, H/W pixels, C colour channels,
P patches per frame, D patch dim, L latent channels. A frame mask is `(B,T)` bool or, as the original
port's Encoder/Decoder/VideoVAE take it, `(B,1,1,T)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from common.config import VAEConfig, resolve_config
from common.masks import frame_mask_is_key_layout
from common.precision import NormNumerics
from jax_ref.compat import get_value, module_list
from jax_ref.init import linear, normal
from jax_ref.layers import FactoredAttention, GumbelSigmoidSTE, PatchEmbedding, PatchUnEmbedding
from jax_ref.selection import Compressed, pack_kept, place_kept, select_frames
from jax_ref.unet import UNet


def _blocks(cfg: VAEConfig, depth: int, kw: dict):
    return module_list(FactoredAttention(**cfg.block_kwargs(), **kw) for _ in range(depth))


def frame_mask(mask: jax.Array, batch: int, frames: int) -> jax.Array:
    """The frame mask as `(B,T)` bool (True = a real frame). Given as `(B,T)`, or as `(B,1,1,T)`, the
    key-mask layout the original port's Encoder, Decoder and VideoVAE take (MODEL_SPEC section 2); both
    forms mean the same. Any other shape is a `ValueError` that names both accepted ones."""
    mask = jnp.asarray(mask)
    if frame_mask_is_key_layout(mask.shape, batch, frames):
        mask = mask[:, 0, 0, :]
    return mask.astype(bool)


def _key_mask(mask: jax.Array, batch: int, frames: int) -> jax.Array:
    """Either mask form -> `(B, 1, 1, T)` bool, the key mask of the temporal attention."""
    return frame_mask(mask, batch, frames)[:, None, None, :]


class Encoder(nnx.Module):
    """`video (B,T,H,W,C), mask (B,T) or (B,1,1,T) bool -> (mean, variance (B,T,P,L), selection (B,T,1))`."""

    def __init__(
        self,
        config=None,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        norm_numerics=NormNumerics.FLAX_0_10,
        **hyperparameters,
    ):
        cfg = self.config = resolve_config(VAEConfig, config, hyperparameters)
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, norm_numerics=norm_numerics)
        lin = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.patch_embedding = PatchEmbedding(cfg.patch_size, cfg.channels, **kw)
        self.layers = _blocks(cfg, cfg.encoder_depth, kw)
        self.spatial_compression = linear(cfg.patch_dim, cfg.latent_dim, **lin)
        self.variance_estimator = linear(cfg.patch_dim, cfg.latent_dim, **lin)
        self.selection_layer1 = linear(cfg.latent_dim, 1, **lin)
        self.selection_layer2 = linear(cfg.num_patches, 1, **lin)

    def __call__(self, video: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        x = self.patch_embedding(video)
        key_mask = _key_mask(mask, *video.shape[:2])
        for layer in self.layers:
            x = layer(x, key_mask)
        mean = self.spatial_compression(x)
        # the Flax original adds no floor here (the PyTorch port adds 1e-6)
        variance = jax.nn.softplus(self.variance_estimator(x))
        frame_logit = self.selection_layer2(jnp.squeeze(self.selection_layer1(mean), -1))
        return mean, variance, jax.nn.sigmoid(frame_logit + 1)


class Decoder(nnx.Module):
    """`latent (B,T,P,L), mask (B,T) or (B,1,1,T) bool -> video (B,T,H,W,C)`."""

    def __init__(
        self,
        config=None,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        norm_numerics=NormNumerics.FLAX_0_10,
        **hyperparameters,
    ):
        cfg = self.config = resolve_config(VAEConfig, config, hyperparameters)
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, norm_numerics=norm_numerics)
        self.spatial_decompression = linear(
            cfg.latent_dim, cfg.patch_dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype
        )
        self.layers = _blocks(cfg, cfg.decoder_depth, kw)
        self.patch_unembedding = PatchUnEmbedding(
            cfg.height, cfg.width, cfg.patch_size, cfg.channels, cfg.unembedding_upsample_rate, **kw
        )
        self.unet = UNet(
            cfg.unet_channels,
            cfg.channels,
            cfg.unet_base_features,
            cfg.unet_num_levels,
            cfg.unet_temporal_kernel,
            **kw,
        )

    def __call__(self, latent: jax.Array, mask: jax.Array) -> jax.Array:
        x = self.spatial_decompression(latent)
        key_mask = _key_mask(mask, *latent.shape[:2])
        for layer in self.layers:
            x = layer(x, key_mask)
        features, video = self.patch_unembedding(x)
        return video + self.unet(features)


# VideoVAE's methods run the encoder and the decoder as one compiled program each (op-by-op dispatch
# compiles every primitive separately: slower on a CPU than the whole graph). Encoder and Decoder
# themselves stay eager, layer by layer, for the parity suite. Both compose with jax.grad and jax.jit.
@nnx.jit
def jitted_encode(encoder: Encoder, video: jax.Array, mask: jax.Array):
    return encoder(video, mask)


@nnx.jit
def jitted_decode(decoder: Decoder, latent: jax.Array, mask: jax.Array):
    return decoder(latent, mask)


def _logit(p: jax.Array) -> jax.Array:
    p = jnp.clip(jnp.asarray(p, jnp.float32), 1e-6, 1 - 1e-6)
    return jnp.log(p) - jnp.log1p(-p)


class VideoVAE(nnx.Module):
    """`encoder`, `decoder` and the `fill_token (1, 1, 1, L)` that stands in for dropped frames."""

    def __init__(
        self,
        config=None,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        norm_numerics=NormNumerics.FLAX_0_10,
        **hyperparameters,
    ):
        cfg = self.config = resolve_config(VAEConfig, config, hyperparameters)
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, norm_numerics=norm_numerics)
        self.dtype = dtype
        self.encoder = Encoder(cfg, **kw)
        self.decoder = Decoder(cfg, **kw)
        init = normal(0.02)
        self.fill_token = nnx.Param(init(rngs.params(), (1, 1, 1, cfg.latent_dim), param_dtype))

    def __call__(self, video: jax.Array, mask: jax.Array, *, key: jax.Array) -> dict[str, jax.Array]:
        """Training forward (reference only): reparameterised latent, Bernoulli frame dropping.

        Returns a dict: `reconstruction (B,T,H,W,C)`, `mean`, `variance`, `latent` (the sampled one, before
        dropping; all `(B,T,P,L)`), `selection (B,T,1)` keep probabilities, `keep (B,T,1)` hard 0/1 with a
        straight-through gradient to `selection`.
        """
        latent_key, keep_key = jax.random.split(key)
        mean, variance, selection = jitted_encode(self.encoder, video, mask)
        # drawn flat: XLA:CPU compiles a 4-D threefry draw many times slower than a 1-D one
        noise = (
            jax.random.normal(latent_key, (mean.size,), jnp.float32).reshape(mean.shape).astype(mean.dtype)
        )
        latent = mean + jnp.sqrt(variance) * noise
        # Bernoulli(p) == round(sigmoid(logit(p) + logistic noise))
        keep = GumbelSigmoidSTE()(_logit(selection), key=keep_key)
        fill = get_value(self.fill_token).astype(latent.dtype)
        kept = keep[..., None].astype(latent.dtype)  # (B, T, 1, 1) against (B, T, P, L)
        dropped_latent = kept * latent + (1 - kept) * fill
        return {
            "reconstruction": jitted_decode(self.decoder, dropped_latent, mask),
            "mean": mean,
            "variance": variance,
            "latent": latent,
            "selection": selection,
            "keep": keep,
        }

    def compress(
        self,
        video: jax.Array,
        mask: jax.Array | None = None,
        *,
        mode: str = "threshold",
        k: int | None = None,
        noise: jax.Array | None = None,
    ) -> Compressed:
        """`video (B, T, H, W, C)` -> the kept mean latents and their gaps (deterministic: no latent noise).

        `mask (B, T)` or `(B, 1, 1, T)` bool marks real frames (None: all); `mode` threshold / bernoulli
        (with `noise`) / topk (with `k`), see `select_frames`.
        """
        b, t = video.shape[:2]
        mask = jnp.ones((b, t), bool) if mask is None else frame_mask(mask, b, t)
        mean, _, selection = jitted_encode(self.encoder, video, mask)
        keep = select_frames(selection[..., 0], mask, mode, k=k, noise=noise)
        kept, gaps, kept_valid = pack_kept(mean, keep)
        return Compressed(kept, gaps, kept_valid, t)

    def decompress(self, compressed: Compressed) -> jax.Array:
        """-> video `(B, num_frames, H, W, C)`; every slot is decoded (all-True mask)."""
        kept, gaps, kept_valid, num_frames = compressed
        latent = place_kept(kept, gaps, kept_valid, int(num_frames), get_value(self.fill_token))
        return jitted_decode(self.decoder, latent, jnp.ones(latent.shape[:2], bool))
