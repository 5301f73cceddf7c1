"""The parity suite of the GPT-2 port: `dfc parity --suite examples/gpt2/suite.py:SUITE`.

One subject (the model: the Linen module inside FlaxGPT2Model against transformers' GPT2Model) and one
case (token ids -> last hidden state), written once for both frameworks. The inputs are two sequences of
8 tokens: causal attention over several positions, so that swapped q and k, or a wrong mask, can show.
`--config tiny|gpt2` picks the size; `--orbax CKPT --weights CONVERTED` checks a real converted pair.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from examples.gpt2 import model as M
from examples.gpt2.table import TABLE
from parity.jax_models import linen_flat
from parity.suite import Case, Options, Subject, Suite

BATCH, LENGTH = 2, 8


def subject(config_name: str = "tiny") -> Subject:
    cfg = M.config(config_name)
    return Subject(
        name="gpt2",
        build_jax=lambda dtype: M.flax_model(cfg, dtype).module,  # the Linen module inside FlaxGPT2Model
        build_torch=lambda: M.torch_model(cfg),
        table=TABLE,
        config=cfg,
        # every leaf random, drawn from the shapes alone (Linen's own `init` would run every initialiser)
        init_weights=lambda seed: linen_flat(M.random_params(cfg, seed)),
        # weightless modules named differently: Flax's embedding dropout is torch's `drop`; Linen's block
        # collection `h` is a module with a call, torch's `h` a ModuleList that is never called
        paths={"dropout": "drop", "h": None},
    )


def _token_ids(subjects, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cfg = subjects["gpt2"].config
    return {"input_ids": rng.integers(0, cfg.vocab_size, (BATCH, LENGTH), dtype=np.int32)}


def _forward(fw, models, inputs):
    gpt2, ids = models["gpt2"], inputs["input_ids"]
    if fw.name == "jax":  # the Linen module takes (input_ids, attention_mask, position_ids)
        return gpt2(ids, None, fw.asarray(np.arange(LENGTH, dtype=np.int32)[None])).last_hidden_state
    return gpt2(input_ids=ids).last_hidden_state


FORWARD = Case("gpt2.forward", ("gpt2",), _token_ids, _forward, covers="embeddings, every block, ln_f")


def _configure(options: Options) -> Suite:
    name = options.config or "tiny"
    if name not in M.CONFIGS:
        raise ValueError(f"--config {name}: the GPT-2 example knows {', '.join(M.CONFIGS)}")
    return replace(SUITE, subjects={"gpt2": subject(name)}, configure=None)


SUITE = Suite(
    "gpt2",
    {"gpt2": subject()},
    (FORWARD,),
    description="transformers' FlaxGPT2Model (Flax Linen) against its GPT2Model (PyTorch)",
    configure=_configure,
)
