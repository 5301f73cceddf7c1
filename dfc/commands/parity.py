"""`dfc parity`: layer-by-layer parity of torch_impl against jax_ref, with a report.

Exit status 0 when every layer passes, 1 when one does not (the first divergent layer is printed).
"""

from __future__ import annotations

import argparse
import os
import sys

from dfc.commands import parity_trace
from dfc.errors import UserError

CONFIGS = {"tiny": {"vae": "vae-tiny", "dit": "dit-tiny"}, "published": {"vae": "vae-256", "dit": "dit-256"}}


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        choices=("vae", "dit", "all"),
        default="all",
        help="which model(s); 'all' adds the generation pipeline DiT -> VAE decode",
    )
    parser.add_argument(
        "--config",
        default="tiny",
        help="'tiny', 'published' (heavy on CPU), a preset name or a config.json PATH",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "mixed"),
        default="bf16",
        help="the torch precision policy under test",
    )
    parser.add_argument(
        "--numerics",
        choices=("flax0.10", "flax0.12.1", "both"),
        default="both",
        help="flax-era norm numerics of the JAX bf16 runs to measure (bf16/mixed only)",
    )
    parser.add_argument(
        "--judge",
        choices=("flax0.10", "flax0.12.1"),
        default=None,
        help="numerics the verdict is against (default: the policy's own: bf16 -> flax0.12.1, "
        "mixed -> flax0.10)",
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
    parser.add_argument("--steps", type=int, default=4, help="Euler steps of the sampling cases")
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="clips per case (the last one has a padded frame); default 2, or 1 at full size on a CPU",
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


def _configs(args) -> dict[str, object]:
    from common.config import load_config

    models = ("vae", "dit") if args.model == "all" else (args.model,)
    if args.config in CONFIGS:
        return {m: load_config(CONFIGS[args.config][m]) for m in models}
    try:
        cfg = load_config(args.config)
    except (FileNotFoundError, ValueError, TypeError) as err:
        raise UserError(str(err)) from None
    if args.model not in ("all", cfg.model_type):
        raise UserError(f"--config {args.config} is a {cfg.model_type} configuration, not a {args.model} one")
    return {cfg.model_type: cfg}


def _select(cases, wanted: str | None):
    if not wanted:
        return cases
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    chosen = [c for c in cases if any(c.name == n or c.name.startswith(n + ".") for n in names)]
    if not chosen:
        raise UserError(f"no case matches --cases {wanted}; cases: {', '.join(c.name for c in cases)}")
    return chosen


def _plan(args, configs):
    from parity import cases as C
    from parity.subjects import dit_subject, vae_subject

    subjects, cases = {}, []
    shape = C.Shape(args.batch, args.frames)
    if "vae" in configs:
        subjects["vae"] = vae_subject(configs["vae"])
        cases += C.vae_cases(shape)
    if "dit" in configs:
        subjects["dit"] = dit_subject(configs["dit"])
        cases += C.dit_cases(args.steps, shape)
    if len(subjects) == 2:
        vae, dit = configs["vae"], configs["dit"]
        if (vae.num_patches, vae.latent_dim) == (dit.hw, dit.compressed_channel_dim):
            cases.append(C.generation_case(args.steps, shape))
    return subjects, cases


def prepare(args):
    """(subjects, cases, settings, weights, torch_models, title, describe) of what `args` ask for."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu" if args.device == "cpu" else "")
    from common.precision import NormNumerics, Precision
    from parity.environment import PINNED
    from parity.runner import MODES, Settings

    if bool(args.orbax) != bool(args.weights):
        raise UserError("--orbax and --weights go together: the checkpoint and its converted weights")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available here")
    _default_shape(args)
    if args.steps < 1 or args.batch < 1 or args.frames < 1:
        raise UserError("--steps, --batch and --frames must be at least 1")
    precision = Precision.parse(args.precision)
    numerics = tuple(NormNumerics) if args.numerics == "both" else (NormNumerics.parse(args.numerics),)
    if args.judge and args.judge not in [n.value for n in numerics]:
        raise UserError(f"--judge {args.judge} is not among the measured --numerics {args.numerics}")
    settings = Settings(
        precision=precision,
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
        subjects, cases, weights, torch_models = _real_pair(args, precision)
        describe = {"orbax": os.path.abspath(args.orbax), "weights": os.path.abspath(args.weights)}
        title = f"{next(iter(subjects))} checkpoint {os.path.basename(os.path.normpath(args.orbax))}"
    else:
        subjects, cases = _plan(args, _configs(args))
        title = f"{'+'.join(subjects)} {args.config}, torch {precision.value}"
    cases = _select(cases, args.cases)
    return subjects, cases, settings, weights, torch_models, title, describe


def run(args) -> int:
    if getattr(args, "action", None) == "compare":
        return parity_trace.compare(args)
    from parity import report
    from parity.runner import run as run_parity

    subjects, cases, settings, weights, torch_models, title, describe = prepare(args)
    if args.save_trace or args.side != "both":
        return parity_trace.save(args, subjects, cases, settings, weights, torch_models)

    def progress(name: str) -> None:
        print(f"dfc parity: {name} ...", file=sys.stderr, flush=True)

    result = run_parity(
        subjects,
        cases,
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


def _default_shape(args) -> None:
    """Small inputs by default, and the smallest that still shows every planted mistake (one clip of 3
    frames) for full-size models on a CPU: there every layer's output is captured three times over."""
    small = args.config == "published" or args.orbax is not None
    if args.config not in CONFIGS and not args.orbax:
        from common.config import load_config

        try:
            small = _is_full_size(load_config(args.config))
        except (FileNotFoundError, ValueError, TypeError):
            small = False  # reported properly by _configs
    small = small and args.device == "cpu"
    if args.batch is None:
        args.batch = 1 if small else 2
    if args.frames is None:
        args.frames = 3 if small else 4


def _is_full_size(cfg) -> bool:
    if cfg.model_type == "vae":
        return cfg.height * cfg.width >= 128 * 128
    return cfg.hw * cfg.residual_dim >= 256 * 512


def _real_pair(args, precision):
    from parity import cases as C
    from parity.real_pair import load_real_pair

    for path, flag in ((args.orbax, "--orbax"), (args.weights, "--weights")):
        if not os.path.exists(path):
            raise UserError(f"{flag} {path}: no such file or directory")
    try:
        pair = load_real_pair(args.orbax, args.weights, precision, args.device)
    except Exception as err:  # reader and loader errors name the file and the key; show them on one line
        raise UserError(f"cannot load the pair: {type(err).__name__}: {err}") from None
    name = pair.subject.name
    if args.model not in ("all", name):
        raise UserError(f"--orbax {args.orbax} holds a {name}, not a {args.model}")
    shape = C.Shape(args.batch, args.frames)
    cases = C.vae_cases(shape) if name == "vae" else C.dit_cases(args.steps, shape)
    return {name: pair.subject}, cases, {name: pair.flat}, {name: pair.torch_model}
