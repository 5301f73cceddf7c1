"""`dfc parity`: layer-by-layer parity of a torch port against its Flax reference, with a report.

The suite (subjects and cases) is a plug-in: `--suite MODULE:NAME` (a dotted module or a .py path), or a
registered name (`vae`, `dit`, `all`: this repository's models). Exit status 0 when every layer passes, 1
when one does not (the first divergent layer is printed).
"""

from __future__ import annotations

import argparse
import os
import sys

from dfc.commands import parity_trace
from dfc.errors import UserError


def add_parser(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--suite",
        metavar="MODULE:NAME",
        default=None,
        help="the suite to run: MODULE:NAME (a dotted module or path/to/file.py) naming a "
        "parity.suite.Suite, "
        "or a registered name: vae, dit, all (default: all)",
    )
    which.add_argument(
        "--model",
        choices=("vae", "dit", "all"),
        default=None,
        help="the same as --suite vae|dit|all; 'all' adds the generation pipeline DiT -> VAE decode",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="for suites that take one (vae, dit, all): 'tiny' (default), 'published' (heavy on CPU), "
        "a preset name or a config.json PATH",
    )
    parser.add_argument(
        "--precision",
        default="bf16",
        help="the torch precision policy under test: fp32, bf16, or one the suite defines (vae/dit: mixed)",
    )
    parser.add_argument(
        "--numerics",
        default="all",
        help="variants of the JAX bf16 run to measure, comma-separated, or 'all' (bf16 policies only; "
        "vae/dit: flax0.10, flax0.12.1 - the flax-era norm numerics; 'both' is 'all')",
    )
    parser.add_argument(
        "--judge",
        default=None,
        help="the variant the verdict is against (default: the suite's pairing for the policy, "
        "vae/dit: bf16 -> flax0.12.1, mixed -> flax0.10)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="torch device")
    parser.add_argument(
        "--mode",
        choices=("isolated", "carried", "both"),
        default="both",
        help="carried: each side end to end on its own activations; isolated: every layer on "
        "the reference's inputs",
    )
    parser.add_argument("--report", default="reports/parity", metavar="DIR", help="where the report goes")
    parser.add_argument("--steps", type=int, default=None, help="Euler steps of sampling cases (default 4)")
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="clips per case, for suites that take it (vae/dit: the last clip has a padded frame; default 2, "
        "or 1 at full size on a CPU)",
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help="frames per clip (at least 3: RoPE and q/k mistakes hide at fewer); default 4, "
        "or 3 at full size on a CPU",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    parser.add_argument(
        "--sdpa",
        choices=("math", "flash", "efficient", "cudnn", "default"),
        default="math",
        help="torch scaled-dot-product-attention backend to pin",
    )
    parser.add_argument("--cases", default=None, help="comma-separated case names (or prefixes) to run")
    parser.add_argument("--orbax", metavar="CKPT", help="a real Orbax checkpoint (needs --weights)")
    parser.add_argument("--weights", metavar="CONVERTED", help="its converted weights (`dfc convert` output)")
    parity_trace.add_arguments(parser)
    parity_trace.add_compare_parser(parser)


def _select(suite, wanted: str | None):
    if not wanted:
        return suite
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    chosen = suite.select(names)
    if not chosen.cases:
        names = ", ".join(c.name for c in suite.cases)
        raise UserError(f"no case matches --cases {wanted}; cases: {names}")
    return chosen


def _suite(args, options):
    from common.plugins import PluginError
    from parity.suite import load_suite

    spec = args.suite or args.model or "all"
    try:
        suite = load_suite(spec)
        given = [f"--{k}" for k in ("config", "steps", "batch", "frames") if getattr(options, k) is not None]
        if given and suite.configure is None:
            raise UserError(f"suite {spec} takes no {', '.join(given)} (it has no `configure`)")
        return suite.configured(options)
    except PluginError as err:
        raise UserError(str(err)) from None
    except (ValueError, FileNotFoundError, TypeError) as err:
        raise UserError(f"suite {spec}: {err}") from None


def prepare(args):
    """(suite, settings, weights, torch_models, title, describe) of what `args` ask for."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu" if args.device == "cpu" else "")
    from parity.environment import PINNED
    from parity.runner import MODES, Settings
    from parity.suite import Options

    if bool(args.orbax) != bool(args.weights):
        raise UserError("--orbax and --weights go together: the checkpoint and its converted weights")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available here")
    for flag in ("steps", "batch", "frames"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError("--steps, --batch and --frames must be at least 1")
    options = Options(args.config, args.steps, args.batch, args.frames, args.device)
    suite = _suite(args, options)
    numerics = (
        ("*",) if args.numerics in ("all", "both") else tuple(n.strip() for n in args.numerics.split(","))
    )
    known = _variants(suite)
    unknown = [n for n in numerics if n != "*" and n not in known]
    if unknown:
        raise UserError(f"--numerics {args.numerics}: the suite's variants are {', '.join(known)}")
    measured = known if numerics == ("*",) else numerics
    if args.judge and args.judge not in measured:
        raise UserError(f"--judge {args.judge} is not among the measured --numerics {args.numerics}")
    settings = Settings(
        precision=args.precision,
        numerics=numerics,
        modes=MODES if args.mode == "both" else (args.mode,),
        device=args.device,
        seed=args.seed,
        pins=PINNED.with_sdpa(args.sdpa),
        judge=args.judge,
    )
    weights = torch_models = None
    describe = {}
    if args.orbax:
        paired = _paired(suite, args, options)
        suite, weights, torch_models, describe = (
            paired.suite,
            paired.weights,
            paired.torch_models,
            paired.describe,
        )
        title = f"{suite.name} checkpoint {os.path.basename(os.path.normpath(args.orbax))}"
    else:
        title = f"{suite.name}{' ' + args.config if args.config else ''}, torch {args.precision}"
    suite = _select(suite, args.cases)
    _check_precision(suite, args.precision)
    return suite, settings, weights, torch_models, title, describe


def run(args) -> int:
    if getattr(args, "action", None) == "compare":
        return parity_trace.compare(args)
    parity_trace.check_target(args)
    from parity import report
    from parity.runner import run as run_parity

    suite, settings, weights, torch_models, title, describe = prepare(args)
    if args.save_trace or args.side != "both":
        return parity_trace.save(
            args, dict(suite.subjects), list(suite.cases), settings, weights, torch_models
        )

    def progress(name: str) -> None:
        print(f"dfc parity: {name} ...", file=sys.stderr, flush=True)

    result = run_parity(
        dict(suite.subjects),
        list(suite.cases),
        settings,
        title=title,
        weights=weights,
        torch_models=torch_models,
        describe=describe,
        progress=progress,
    )
    files = report.write(result, args.report)
    verdict = "PASS" if result.passed else "FAIL"
    print(
        f"dfc parity: {verdict} ({len(result.cases)} case runs, judged against {result.verdict_judge}); "
        f"first divergent layer: {report.first_divergent_text(result)}"
    )
    print(f"dfc parity: report in {files['md'].parent}")
    return 0 if result.passed else 1


def _variants(suite) -> list[str]:
    from parity.suite import BF16

    found = [v for s in suite.subjects.values() for v in s.variants]
    return list(dict.fromkeys(found)) or [BF16]


def _check_precision(suite, precision: str) -> None:
    """A policy no subject can apply is a bad argument, said before anything is built."""
    for subject in suite.subjects.values():
        if precision not in subject.precisions:
            known = ", ".join(subject.precisions)
            raise UserError(f"--precision {precision}: subject {subject.name} knows {known}")


def _paired(suite, args, options):
    for path, flag in ((args.orbax, "--orbax"), (args.weights, "--weights")):
        if not os.path.exists(path):
            raise UserError(f"{flag} {path}: no such file or directory")
    from parity.pairing import generic_pair

    try:
        if suite.pair is not None:
            return suite.pair(args.orbax, args.weights, args.precision, options)
        return generic_pair(suite, args.orbax, args.weights, args.precision, options)
    except Exception as err:  # reader and loader errors name the file and the key; show them on one line
        raise UserError(f"cannot load the pair: {type(err).__name__}: {err}") from None
