"""The source of a user's plug-in: a small Flax model (Linen, and its NNX twin) and its torch port, with the
conversion table and the parity suite, as a porter would write them in a file of their own.

Tests write `source()` into a temporary `.py` file and hand it to `dfc` by path (`FILE.py:SUITE`), so
nothing in this repository knows the model. `gelu` is the torch port's GELU: flax's `nn.gelu` is the
tanh approximation; `"none"` (torch's default, the exact erf) is the classic porting mistake.
"""

from __future__ import annotations

SOURCE = '''
"""A tiny Flax model and its torch port: a LayerNorm, a GELU MLP, a head, with a residual."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from common.kinds import Kind
from common.tables import Rule, Table
from parity.suite import Case, Subject, Suite

WIDTH, HIDDEN = 8, 16
TORCH_GELU = "{gelu}"


class LinenMLP(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(HIDDEN, dtype=self.dtype, name="up")(x)
        return nn.Dense(WIDTH, dtype=self.dtype, name="down")(nn.gelu(h))


class LinenModel(nn.Module):
    dtype: Any = jnp.float32

    def setup(self):
        self.norm = nn.LayerNorm(dtype=self.dtype)
        self.mlp = LinenMLP(self.dtype)
        self.head = nn.Dense(WIDTH, dtype=self.dtype)

    def __call__(self, x):
        return self.head(x + self.mlp(self.norm(x)))


class NnxMLP(nnx.Module):
    def __init__(self, dtype, rngs):
        self.up = nnx.Linear(WIDTH, HIDDEN, dtype=dtype, rngs=rngs)
        self.down = nnx.Linear(HIDDEN, WIDTH, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.down(jax.nn.gelu(self.up(x)))


class NnxModel(nnx.Module):
    def __init__(self, dtype=jnp.float32, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.norm = nnx.LayerNorm(WIDTH, dtype=dtype, rngs=rngs)
        self.mlp = NnxMLP(dtype, rngs)
        self.head = nnx.Linear(WIDTH, WIDTH, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.head(x + self.mlp(self.norm(x)))


class TorchMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(WIDTH, HIDDEN)
        self.down = torch.nn.Linear(HIDDEN, WIDTH)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x), approximate=TORCH_GELU))


class TorchModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(WIDTH, eps=1e-6)  # flax's epsilon
        self.mlp = TorchMLP()
        self.head = torch.nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        x = x.to(self.head.weight.dtype)
        return self.head(x + self.mlp(self.norm(x)))


TABLE = Table(
    "tiny-mlp",
    rules=(Rule("*norm.scale", Kind.NORM_SCALE), Rule("*.kernel", Kind.LINEAR), Rule("*.bias", Kind.BIAS)),
    rope_caches=lambda config: {{}},
)
# the same table with its LayerNorm rule forgotten: `dfc inspect --table` lists `norm.scale` as unmatched
TABLE_WITHOUT_NORMS = Table("tiny-mlp", rules=(Rule("*.kernel", Kind.LINEAR), Rule("*.bias", Kind.BIAS)))
CASE = Case(
    "mlp.forward",
    ("mlp",),
    make_inputs=lambda subjects, rng: {{"x": rng.standard_normal((2, 3, WIDTH), dtype=np.float32)}},
    run=lambda fw, models, inputs: models["mlp"](inputs["x"]),
    covers="LayerNorm, a GELU MLP, a head",
)
SUITE = Suite(
    "tiny-mlp",
    {{
        "mlp": Subject(
            "mlp",
            build_jax=lambda dtype: LinenModel(dtype=dtype),
            build_torch=TorchModel,
            table=TABLE,
            example_args=lambda: (jnp.zeros((1, WIDTH), jnp.float32),),
        )
    }},
    (CASE,),
)
NNX_SUITE = Suite(
    "tiny-mlp-nnx",
    {{"mlp": Subject("mlp", build_jax=lambda dtype: NnxModel(dtype), build_torch=TorchModel, table=TABLE)}},
    (CASE,),
)
'''


def source(gelu: str = "tanh") -> str:
    return SOURCE.format(gelu=gelu)
