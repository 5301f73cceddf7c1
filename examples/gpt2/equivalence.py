"""What transformers' own Flax/PyTorch equivalence check sees, beside what this toolkit's parity suite adds.

    python -m examples.gpt2.equivalence [--config tiny] [--out FILE.md]

On the same random weights (every leaf), for a correct port and for the two planted mistakes:

- transformers' check: the Flax params go through its own Flax-to-PyTorch loader
  (`load_flax_weights_in_pytorch_model`, what `from_pretrained(..., from_flax=True)` runs), and the final
  hidden states of GPT2Model are compared with FlaxGPT2Model's at a flat 1e-5 (max abs), as its
  Flax/PyTorch equivalence tests do. One number, no location; in bf16 a flat 1e-5 cannot pass.
- ours: `dfc parity`'s suite (`examples/gpt2/suite.py`), every layer, carried and isolated; bf16 judged
  against JAX's own bf16 error; the first divergent layer.

Prints a markdown table (docs/PORTING.md shows the one measured on the tiny configuration).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HF_ATOL = 1e-5  # transformers' Flax/PyTorch equivalence tests: max abs difference of the outputs


@dataclass
class Row:
    port: str
    hf_diff: float
    ours: str
    ours_detail: str

    @property
    def hf_verdict(self) -> str:
        return "pass" if self.hf_diff <= HF_ATOL else "FAIL"


def _hf_torch_model(cfg, params, dtype):
    import torch
    from transformers.modeling_flax_pytorch_utils import load_flax_weights_in_pytorch_model

    from examples.gpt2 import model as M

    model = load_flax_weights_in_pytorch_model(M.torch_model(cfg), params)
    return model.to(torch.bfloat16 if dtype == "bf16" else torch.float32).eval()


def _hf_diff(torch_model, ids: np.ndarray, flax_out: np.ndarray) -> float:
    import torch

    with torch.inference_mode():
        out = torch_model(input_ids=torch.from_numpy(ids)).last_hidden_state.float().numpy()
    return float(np.abs(out - flax_out).max())


def _same_weights(cfg, params, flat) -> str:
    """transformers' loader and our table give the same state dict, bit for bit."""
    from convert.tables import flax_to_torch
    from examples.gpt2.table import TABLE

    theirs = {k: v.numpy() for k, v in _hf_torch_model(cfg, params, "fp32").state_dict().items()}
    ours, _ = flax_to_torch(TABLE, flat)
    same = set(theirs) == set(ours) and all(np.array_equal(theirs[k], ours[k]) for k in ours)
    return f"{len(ours)} tensors, {'bit-identical' if same else 'DIFFERENT'}"


def _ours(results, judge: str) -> tuple[str, str]:
    by_mode = {r.mode: r for r in results}
    rows = len(by_mode["isolated"].rows)
    if all(r.passed(judge) for r in results):
        worst = max(by_mode["carried"].rows, key=lambda row: row.torch.err if row.torch else 0)
        if judge == "fp32":
            detail = f"all {rows} layers; worst rel max {worst.torch.rel_max:.1e}"
        else:
            jax_err = max(m.err for m in worst.jax.values())
            detail = f"all {rows} layers; worst torch err {worst.torch.err:.3f} vs JAX bf16 {jax_err:.3f}"
        return "pass", detail
    first = by_mode["isolated"].first_divergent(judge)
    carried = by_mode["carried"].first_divergent(judge)
    detail = f"first divergent `{first.label}` (carried: `{carried.label}`)" if first else "?"
    return "FAIL", detail


def measure(config_name: str = "tiny", seed: int = 0) -> tuple[list[Row], str]:
    import jax.numpy as jnp

    from examples.gpt2 import model as M
    from examples.gpt2.mistakes import MISTAKES
    from examples.gpt2.suite import FORWARD, subject
    from parity.environment import pinned
    from parity.jax_models import linen_flat
    from parity.runner import Lineup, Settings, run_case

    gpt2 = subject(config_name)
    cfg = gpt2.config
    variables = M.random_params(cfg, seed)
    flat = {k: np.asarray(v) for k, v in linen_flat(variables).items()}
    inputs = FORWARD.make_inputs({"gpt2": gpt2}, np.random.default_rng(seed))
    ids = inputs["input_ids"]
    positions = np.arange(ids.shape[1], dtype=np.int32)[None]
    flax = M.flax_model(cfg, jnp.float32).module
    flax_out = np.asarray(flax.apply(variables, ids, None, positions).last_hidden_state)
    rows = []
    with pinned():
        fp32 = Lineup.build({"gpt2": gpt2}, Settings(precision="fp32", seed=seed), weights={"gpt2": flat})
        hf = _hf_torch_model(cfg, variables["params"], "fp32")
        rows.append(
            Row("correct, fp32", _hf_diff(hf, ids, flax_out), *_ours(run_case(FORWARD, fp32, inputs), "fp32"))
        )
        bf16 = Lineup.build({"gpt2": gpt2}, Settings(precision="bf16", seed=seed), weights={"gpt2": flat})
        hf16 = _hf_torch_model(cfg, variables["params"], "bf16")
        results = run_case(FORWARD, bf16, inputs)
        rows.append(
            Row("correct, bf16", _hf_diff(hf16, ids, flax_out), *_ours(results, bf16.settings.verdict_judge))
        )
        for name, (plant, path) in MISTAKES.items():
            broken = fp32.with_torch({"gpt2": plant(fp32.torch["gpt2"])})
            ours = _ours(run_case(FORWARD, broken, inputs), "fp32")
            rows.append(Row(f"{name} (`{path}`), fp32", _hf_diff(plant(hf), ids, flax_out), *ours))
    return rows, _same_weights(cfg, variables["params"], flat)


def table(rows: list[Row], weights: str) -> str:
    lines = [
        "| port | transformers' check: last hidden state, max abs diff | at 1e-5 | ours | what ours says |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.port} | {row.hf_diff:.2e} | {row.hf_verdict} | {row.ours} | {row.ours_detail} |"
        )
    lines.append("")
    lines.append(
        f"Weights: transformers' loader and `examples/gpt2/table.py` give the same state dict ({weights})."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help="tiny or gpt2 (the published 124M size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    text = table(*measure(args.config, args.seed))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
