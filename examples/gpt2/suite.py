"""The parity suite of the GPT-2 port: `dfc parity --suite examples/gpt2/suite.py:SUITE`.

One subject (the model, Flax Linen on one side and transformers' GPT2Model on the other) and one case
(token ids -> last hidden state), written once for both frameworks. The inputs are two sequences of 8
tokens: causal attention over several positions, so swapped q and k or a wrong mask can show.
"""

from __future__ import annotations

import numpy as np

from examples.gpt2 import model as M
from examples.gpt2.table import TABLE
from parity.jax_models import linen_flat
from parity.suite import Case, Subject, Suite

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
        positions = fw.asarray(np.arange(LENGTH, dtype=np.int32)[None])
        return gpt2(ids, None, positions).last_hidden_state
    return gpt2(input_ids=ids).last_hidden_state


FORWARD = Case("gpt2.forward", ("gpt2",), _token_ids, _forward, covers="embeddings, every block, ln_f")
SUITE = Suite("gpt2", {"gpt2": subject()}, (FORWARD,), description="transformers FlaxGPT2Model -> GPT2Model")
