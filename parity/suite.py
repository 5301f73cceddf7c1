"""What a parity run is made of, for any model: subjects (a model built in both frameworks), cases (what is
run on which inputs), and a suite (subjects + cases), found by `MODULE:NAME` like any plug-in.

The core knows no model: a subject brings its builders, its conversion table and whatever its numerics
need (variants of the JAX bf16 run, torch precision policies); a case's `run(fw, models, inputs)` is
written once for both frameworks. `parity.suites` holds this repository's own suites (`vae`, `dit`, `all`);
a user's suite lives in the user's own file (docs/PORTING.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

Inputs = dict[str, np.ndarray]
BF16 = "bf16"  # the name of the one JAX bf16 run of a subject that declares no variants


@dataclass(frozen=True)
class Subject:
    """A model (or a lone block) built in both frameworks, and how weights move between them.

    `build_jax(dtype)` returns a Flax NNX module or a Flax Linen module computing in `dtype` with float32
    parameters; a subject that declares `variants` (named flavours of the JAX bf16 run, e.g. the flax-era
    norm numerics) is built as `build_jax(dtype, variant)`. `build_torch()` returns the torch port. The
    torch model gets the JAX weights through `table` (a `convert` Table); `prefix` places a lone block
    inside the table's model (`"encoder.layers.0."`).
    """

    name: str
    build_jax: Callable[..., Any]
    build_torch: Callable[[], Any]
    table: Any  # convert's Table
    prefix: str = ""
    config: Any = None
    # module paths (fnmatch) where the torch port holds 5-D activations as (B, C, T, H, W)
    channels_first: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()
    # torch precision policy -> the variant its bf16 verdict is held to (default: the first measured)
    natural: Mapping[str, str] = field(default_factory=dict)
    # the torch precision policies the subject knows, and (torch model, policy) -> the model under it
    # (default: fp32 -> float(), bf16 -> every parameter and buffer bfloat16)
    precisions: tuple[str, ...] = ("fp32", "bf16")
    cast_torch: Callable[[Any, str], Any] | None = None
    # called on the torch model after its weights are loaded (e.g. recompute caches that are not weights)
    prepare_torch: Callable[[Any], None] | None = None
    # seed -> {flax leaf name: fp32 array}; default: the model as built, every parameter drawn at random
    init_weights: Callable[[int], dict[str, np.ndarray]] | None = None
    # () -> positional arguments for a Linen module's `init` (Linen modules create parameters on a call)
    example_args: Callable[[], tuple] | None = None
    # reference module path -> torch module path, for modules that hold no weights and that two
    # implementations written apart name differently (transformers' GPT-2: Flax `dropout`, torch `drop`);
    # None for a reference module with no torch counterpart, which is then not compared (Linen's block
    # collection `h`, a plain ModuleList in torch). Modules with weights are paired by the table's names.
    paths: Mapping[str, str | None] = field(default_factory=dict)

    def jax_variants(self) -> tuple[str, ...]:
        return self.variants or (BF16,)

    def build(self, dtype, variant: str | None):
        """The JAX module in `dtype`; `variant` is passed only to subjects that declare variants."""
        if not self.variants:
            return self.build_jax(dtype)
        return self.build_jax(dtype, variant if variant in self.variants else self.variants[0])


@dataclass(frozen=True)
class Case:
    """One promise of the product: `run(fw, models, inputs)` on inputs from `make_inputs(subjects, rng)`.

    `fw` is the framework (`fw.name` is "jax" or "torch"; `fw.asarray`, `fw.numpy` move arrays), `models`
    maps subject names to built models (a Linen model comes bound to its variables), `inputs` holds the
    case's arrays already on the framework.
    """

    name: str
    models: tuple[str, ...]  # subject names, e.g. ("dit", "vae") for a pipeline of two models
    make_inputs: Callable[[Mapping[str, Any], np.random.Generator], Inputs]  # (subjects, rng) -> inputs
    run: Callable[[Any, Mapping[str, Any], Mapping[str, Any]], Any]
    step_path: str | None = None  # the module whose calls are sampler steps
    covers: str = ""
    discrete: tuple[str, ...] = field(default=())  # output suffixes compared exactly (indices, lengths)


@dataclass(frozen=True)
class Options:
    """What the command line says about a run, for a suite that adapts to it (`Suite.configure`)."""

    config: str | None = None
    steps: int | None = None
    batch: int | None = None
    frames: int | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class Paired:
    """A real converted pair: the suite to run, the JAX weights (flax leaves per subject) and the torch
    models loaded from the converted files."""

    suite: Suite
    weights: dict[str, dict[str, np.ndarray]]
    torch_models: dict[str, Any]
    describe: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    """Subjects and the cases run on them. `configure(options)` (optional) returns the suite the command
    line's options ask for; `pair(orbax, weights, precision, options)` (optional) returns a `Paired` run of
    a real checkpoint against its converted weights (default: `parity.pairing.generic_pair`)."""

    name: str
    subjects: Mapping[str, Subject]
    cases: Sequence[Case]
    description: str = ""
    configure: Callable[[Options], Suite] | None = None
    pair: Callable[..., Paired] | None = None

    def configured(self, options: Options) -> Suite:
        return self.configure(options) if self.configure else self

    def select(self, wanted: Sequence[str]) -> Suite:
        """Only the cases named (or prefixed, `vae` for `vae.encode`...) by `wanted`."""
        chosen = [c for c in self.cases if any(c.name == n or c.name.startswith(n + ".") for n in wanted)]
        return replace(self, cases=tuple(chosen))


def load_suite(spec: str) -> Suite:
    """The `Suite` that `spec` names: `MODULE:NAME`, `path/to/file.py:NAME`, or a registered name."""
    from common.plugins import load_plugin
    from parity.suites import REGISTERED

    return load_plugin(spec, "suite", REGISTERED, Suite)
