"""The pair, its configurations and its weights: what a user of FlaxGPT2Model has before porting.

`FlaxGPT2Model` is a wrapper around a Linen module (`.module`) whose parameter tree is
`{'params': {'wte', 'wpe', 'h': {'0', '1', ...}, 'ln_f'}}`; `GPT2Model` is the torch class whose state
dict `dfc convert` writes. Weights are random (seeded), every leaf of them, the zero-initialised biases
and the all-ones LayerNorm scales included: a zero bias or a unit scale hides a conversion bug.
"""

from __future__ import annotations

import numpy as np

# GPT2Config fields: the tiny configuration runs in `make test`; "gpt2" is the published 124M size.
CONFIGS = {
    "tiny": dict(n_embd=32, n_layer=2, n_head=4, n_positions=16, vocab_size=64),
    "gpt2": dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257),
}
# Inference: no dropout anywhere (dropout modules are then the identity on both sides).
_NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def config(name: str = "tiny"):
    """A `GPT2Config`; the torch side computes attention the plain way (`eager`), as the Flax side does."""
    from transformers import GPT2Config

    cfg = GPT2Config(**CONFIGS[name], **_NO_DROPOUT, use_cache=False)  # no key/value cache either
    cfg._attn_implementation = "eager"
    return cfg


def flax_model(cfg, dtype=None):
    """The Flax (Linen) model, computing in `dtype` (default float32) with float32 parameters. No
    parameters are drawn: they come from `random_params` or a checkpoint."""
    import jax.numpy as jnp
    from transformers import FlaxGPT2Model
    from transformers.utils import logging

    logging.set_verbosity_error()  # its advice to move to PyTorch is printed once per process otherwise
    return FlaxGPT2Model(cfg, dtype=dtype or jnp.float32, _do_init=False)


def torch_model(cfg):
    """The PyTorch model, in eval mode."""
    from transformers import GPT2Model

    return GPT2Model(cfg).eval()


def random_params(cfg, seed: int = 0) -> dict:
    """Seeded random Linen variables `{'params': ...}` for `cfg`: every leaf drawn, in sorted-path order."""
    import jax
    import jax.numpy as jnp

    module = flax_model(cfg).module
    ids = jnp.zeros((1, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), ids, ids, ids))
    rng = np.random.default_rng(seed)
    flat = sorted(jax.tree_util.tree_flatten_with_path(shapes)[0], key=lambda kv: jax.tree_util.keystr(kv[0]))
    values = {jax.tree_util.keystr(path): _random_leaf(path, leaf.shape, rng) for path, leaf in flat}
    return jax.tree_util.tree_map_with_path(lambda path, _: values[jax.tree_util.keystr(path)], shapes)


def _random_leaf(path, shape, rng: np.random.Generator) -> np.ndarray:
    leaf = str(path[-1].key)
    noise = rng.standard_normal(shape, dtype=np.float32)
    if leaf == "kernel":  # FlaxConv1D holds (out, in)
        return noise / np.float32(np.sqrt(shape[-1]))
    if leaf == "scale":
        return 1 + np.float32(0.1) * noise
    if leaf == "bias":
        return np.float32(0.1) * noise
    return np.float32(0.02) * noise  # embeddings, GPT-2's own initialiser scale
