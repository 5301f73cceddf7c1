"""Where the VAE decoder's time goes: transformer layers, patch un-embedding and the 3-D UNet.

    python -m bench.decoder_stages            # part of `make bench`; its own section of BENCHMARKS.md

torch_impl at the published size, one process, each stage timed on the previous stage's real output
(median of several runs after a warm-up), in every precision asked for.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- decoder-stages:start -->", "<!-- decoder-stages:end -->"


def measure(preset: str, frames: int, precisions: list[str], target_s: float) -> list[dict]:
    import torch

    import torch_impl
    from common.config import PRESETS

    cfg = PRESETS[preset]
    torch.manual_seed(0)
    decoder = torch_impl.VideoVAE(cfg).eval().decoder
    latent = torch.randn(1, frames, cfg.num_patches, cfg.latent_dim)
    mask = torch.ones(1, frames, dtype=torch.bool)
    rows = []
    for precision in precisions:
        torch_impl.apply_precision(decoder, precision)
        with torch.inference_mode():
            rows.append({"precision": precision, **_stages(decoder, latent, mask, target_s)})
    return rows


def _stages(decoder, latent, mask, target_s: float) -> dict[str, float]:
    from bench.machine import timed

    key_mask = mask[:, None, None, :]
    x0 = decoder.spatial_decompression(latent.to(decoder.compute_dtype))

    def layers():
        x = x0
        for layer in decoder.layers:
            x = layer(x, key_mask)
        return x

    x = layers()
    features, _ = decoder.patch_unembedding(x)
    stages = {
        "transformer layers": timed(layers, target_s),
        "patch un-embedding": timed(lambda: decoder.patch_unembedding(x), target_s),
        "UNet": timed(lambda: decoder.unet(features), target_s),
        "whole decoder": timed(lambda: decoder(latent, mask), target_s),
    }
    return {name: t["median_s"] for name, t in stages.items()}


def render(rows: list[dict], preset: str, frames: int, command: str) -> str:
    lines = [
        START,
        f"## Where the VAE decoder's time goes ({preset}, {frames} frames, torch_impl)",
        "",
        f"Command: `{command}`. Each stage is timed on the previous one's output (median after a warm-up).",
        "",
        "| precision | transformer layers | patch un-embedding | UNet | whole decoder | UNet share |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = r["UNet"] / r["whole decoder"]
        lines.append(
            f"| {r['precision']} | {r['transformer layers']:.2f} s | {r['patch un-embedding']:.2f} s | "
            f"{r['UNet']:.2f} s | {r['whole decoder']:.2f} s | {100 * share:.0f}% |"
        )
    lines += ["", END]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vae-256")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--target-s", type=float, default=4.0)
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=REPO / "bench.json")
    args = parser.parse_args(argv)
    rows = measure(args.preset, args.frames, args.precisions.split(","), args.target_s)
    command = "python -m bench.decoder_stages" + (f" {' '.join(argv)}" if argv else "")
    from bench.report import write_docs

    write_docs(render(rows, args.preset, args.frames, command), args.docs, START, END)
    full = json.loads(args.json.read_text(encoding="utf-8")) if args.json.is_file() else {}
    full["decoder_stages"] = {"preset": args.preset, "frames": args.frames, "rows": rows}
    args.json.write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
