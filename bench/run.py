"""Model benchmark: torch_impl beside the jitted jax_ref on this machine (`make bench`).

    python -m bench.run                      # published sizes; writes docs/BENCHMARKS.md and bench.json
    python -m bench.run --quick --out DIR    # tiny configs in seconds (smoke test), files under DIR
    python -m bench.run --only matmul,dit --frames 8

Parts (`--only`, comma-separated): matmul (dense matmul peak, torch and jax), vae (encode and decode
at each of `--frames`), dit (one step and a 100-step estimate), load (torch_impl.load_vae from
safetensors), memory (peak RSS of decoding `--mem-frames` frames, in a child process), cli (cold
`dfc compress`/`dfc decompress` of a 32-frame clip beside the model time and packing inside), stages
(bench.decoder_stages: the decoder's transformer, un-embedding and UNet times; its own section), convert
(bench.convert_bench, its own docs section; only in a full run without --only/--quick).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

REPO = Path(__file__).resolve().parents[1]
PARTS = ("matmul", "vae", "dit", "load", "memory", "cli", "stages", "convert")
DEFAULT_CACHE = Path(os.environ.get("DFC_BENCH_CACHE", Path.home() / ".cache" / "dfc-bench"))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny configs (vae-tiny, dit-tiny), a few seconds")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--frames", type=_ints, default=None, help="VAE frame counts (default 8,32; quick 4)")
    p.add_argument("--dit-frames", type=int, default=None, help="DiT latent frames (default 8; quick 4)")
    p.add_argument("--mem-frames", type=int, default=None, help="frames decoded for peak memory (default 64)")
    p.add_argument("--precisions", default="fp32,bf16", help="torch policies: fp32,bf16,mixed")
    p.add_argument("--ops", default="encode,decode", help="VAE ops")
    p.add_argument("--target-s", type=float, default=None, help="seconds of timed runs per figure")
    p.add_argument("--no-full-dit", action="store_true", help="torch DiT step as block x depth too")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=None, help="write BENCHMARKS.md and bench.json here")
    p.add_argument("--render-only", action="store_true", help="rewrite the docs section from bench.json")
    p.add_argument(
        "--merge", action="store_true", help="with --only: replace just those parts of the last full run"
    )
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    return p


def _memory(path: Path, frames: int, precision: str) -> dict:
    args = [sys.executable, "-m", "bench.run", "--child", "decode-mem", str(path), str(frames), precision]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["command"] = shlex.join(["python", *args[1:]])
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.child:
        from bench.models import child_decode_memory

        what, *rest = args.child
        assert what == "decode-mem", what
        print(json.dumps(child_decode_memory(*rest)), flush=True)
        return 0

    from bench import machine, models, report
    from common import PRESETS

    quick = args.quick
    heavy = ("convert", "stages")  # full-size only: skipped by --quick
    parts = args.only.split(",") if args.only else [p for p in PARTS if not (quick and p in heavy)]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"--only: unknown part(s) {unknown}; choose from {PARTS}")
    presets = {"vae": "vae-tiny" if quick else "vae-256", "dit": "dit-tiny" if quick else "dit-256"}
    vae_cfg, dit_cfg = PRESETS[presets["vae"]], PRESETS[presets["dit"]]
    frames = args.frames or ([4] if quick else [8, 32])
    dit_frames = args.dit_frames or (4 if quick else 8)
    mem_frames = args.mem_frames or (8 if quick else 64)
    precisions = args.precisions.split(",")
    target = args.target_s or (0.2 if quick else 4.0)
    command = shlex.join(["python", "-m", "bench.run", *(argv if argv is not None else sys.argv[1:])])

    docs = (args.out / "BENCHMARKS.md") if args.out else REPO / "docs" / "BENCHMARKS.md"
    out_json = (args.out / "bench.json") if args.out else REPO / "bench.json"

    if args.render_only:
        data = json.loads(out_json.read_text(encoding="utf-8"))["model"]
        report.write_docs(report.render(data), docs)
        print(f"rewrote {docs} from {out_json}", flush=True)
        return 0
    info = machine.info()
    results: dict = {}
    skipped: list[str] = []
    t_start = time.perf_counter()
    if "matmul" in parts:
        shape = (256, 128, 512) if quick else (2048, 1024, 4096)
        results["matmul"] = machine.matmul_peak(*shape, target_s=target if quick else 3.0)
        print(json.dumps({k: v for k, v in results["matmul"].items()}, default=str), flush=True)
    rows: list[dict] = []
    if "vae" in parts:
        rows += models.vae_rows(vae_cfg, frames, precisions, args.ops.split(","), target)
    if "dit" in parts:
        rows += models.dit_rows(dit_cfg, dit_frames, precisions, target, full_torch=not args.no_full_dit)
    if rows:
        results["rows"] = rows
    if {"load", "memory", "cli"} & set(parts):
        path = models.ensure_vae_file(vae_cfg, presets["vae"], args.cache)
        if "load" in parts:
            results["load"] = models.load_row(path, target)
        if "memory" in parts:
            results["memory"] = _memory(path, mem_frames, "bf16")
        if "cli" in parts:
            from bench.cli_bench import cli_rows

            results["cli"] = cli_rows(path, precisions, target, runs=1 if quick else 3)
    if "stages" in parts:
        from bench import decoder_stages

        decoder_stages.main(["--precisions", args.precisions, "--docs", str(docs), "--json", str(out_json)])
    if "convert" in parts:
        from bench import convert_bench

        convert_bench.main(["--docs", str(docs), "--json", str(out_json)])
    results["wall_s"] = time.perf_counter() - t_start
    if "mixed" not in precisions:
        skipped.append("torch precision `mixed` (pass `--precisions fp32,bf16,mixed`)")
    for p in PARTS:
        if p not in parts:
            own = {"convert": "bench.convert_bench", "stages": "bench.decoder_stages"}
            skipped.append(f"`{p}` ({own[p]}: its own section)" if p in own else f"`{p}`")
    data = {
        "command": command,
        "presets": presets,
        "frames": {"vae": frames, "dit": dit_frames, "memory": mem_frames},
        "machine": info,
        "results": results,
        "skipped": skipped,
        "spec_reference": report.SPEC_REFERENCE,
    }
    if args.merge:
        data = _merged(out_json, data, parts)
    report.write_docs(report.render(data), docs)
    report.write_json(data, out_json)
    print(f"wrote {docs} and {out_json}", flush=True)
    return 0


def _merged(path: Path, data: dict, parts: list[str]) -> dict:
    """The previous run's data with this run's parts replacing its own; the report names the re-run."""
    previous = json.loads(path.read_text(encoding="utf-8"))["model"]
    measured = {k: v for k, v in data["results"].items() if k != "wall_s"}
    if "rows" in measured:
        raise SystemExit("--merge re-measures whole parts: load, memory, cli or matmul, not vae/dit rows")
    previous["results"].update(measured)
    previous.setdefault("re_measured", []).append(
        {
            "parts": sorted(measured),
            "command": data["command"],
            "load_average": data["machine"]["load_average_at_start"],
        }
    )
    return previous


if __name__ == "__main__":
    sys.exit(main())
