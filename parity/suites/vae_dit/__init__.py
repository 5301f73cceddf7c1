"""This repository's VAE and DiT as parity suites: `VAE`, `DIT` and `ALL` (both, plus generation DiT -> VAE).

Registered as `vae`, `dit` and `all` (`parity.suites`), and resolved like any user's suite. Each adapts
to the command line (`--config tiny|published|NAME|PATH`, `--steps`, `--batch`, `--frames`) through
`configure`, and checks a real Orbax checkpoint against its converted weights through `pair`.
"""

from __future__ import annotations

import os
from dataclasses import replace

from parity.suite import Options, Paired, Suite
from parity.suites.vae_dit import cases as C
from parity.suites.vae_dit.subjects import dit_subject, vae_subject

CONFIGS = {"tiny": {"vae": "vae-tiny", "dit": "dit-tiny"}, "published": {"vae": "vae-256", "dit": "dit-256"}}


def _is_full_size(cfg) -> bool:
    if cfg.model_type == "vae":
        return cfg.height * cfg.width >= 128 * 128
    return cfg.hw * cfg.residual_dim >= 256 * 512


def _configs(models: tuple[str, ...], config: str | None) -> dict[str, object]:
    from common.config import load_config

    config = config or "tiny"
    if config in CONFIGS:
        return {m: load_config(CONFIGS[config][m]) for m in models}
    try:
        cfg = load_config(config)
    except (FileNotFoundError, TypeError) as err:
        raise ValueError(str(err)) from None
    if cfg.model_type not in models:
        raise ValueError(f"--config {config} is a {cfg.model_type} configuration, not a {models[0]} one")
    return {cfg.model_type: cfg}


def shape_for(configs, options: Options) -> C.Shape:
    """Small inputs by default, and the smallest that still shows every planted mistake (one clip of 3
    frames) for full-size models on a CPU: there every layer's output is captured three times over."""
    small = options.device == "cpu" and any(_is_full_size(cfg) for cfg in configs.values())
    batch = options.batch if options.batch is not None else (1 if small else C.BATCH)
    frames = options.frames if options.frames is not None else (3 if small else C.FRAMES)
    return C.Shape(batch, frames)


def suite_for(configs: dict[str, object], shape: C.Shape, steps: int = C.SAMPLER_STEPS) -> Suite:
    """The subjects of `configs` (a VAE, a DiT or both) and every case they can run."""
    subjects, cases = {}, []
    if "vae" in configs:
        subjects["vae"] = vae_subject(configs["vae"])
        cases += C.vae_cases(shape)
    if "dit" in configs:
        subjects["dit"] = dit_subject(configs["dit"])
        cases += C.dit_cases(steps, shape)
    if len(subjects) == 2:
        vae, dit = configs["vae"], configs["dit"]
        if (vae.num_patches, vae.latent_dim) == (dit.hw, dit.compressed_channel_dim):
            cases.append(C.generation_case(steps, shape))
    return Suite("+".join(subjects), subjects, tuple(cases))


def _configure(models: tuple[str, ...]):
    def configure(options: Options) -> Suite:
        configs = _configs(models, options.config)
        suite = suite_for(configs, shape_for(configs, options), options.steps or C.SAMPLER_STEPS)
        return replace(suite, configure=configure, pair=_pair(models))

    return configure


def _pair(models: tuple[str, ...]):
    def pair(orbax, weights, precision, options: Options) -> Paired:
        from parity.suites.vae_dit.real_pair import load_real_pair

        real = load_real_pair(orbax, weights, precision, options.device)
        name = real.subject.name
        if name not in models:
            raise ValueError(f"{orbax} holds a {name}, not a {'/'.join(models)}")
        configs = {name: real.subject.config}
        shape = shape_for(configs, replace(options, batch=options.batch, frames=options.frames))
        steps = options.steps or C.SAMPLER_STEPS
        cases = C.vae_cases(shape) if name == "vae" else C.dit_cases(steps, shape)
        suite = Suite(name, {name: real.subject}, tuple(cases))
        describe = {"orbax": os.path.abspath(orbax), "weights": os.path.abspath(weights)}
        return Paired(suite, {name: real.flat}, {name: real.torch_model}, describe)

    return pair


def _suite(models: tuple[str, ...], description: str) -> Suite:
    suite = _configure(models)(Options())
    return replace(suite, description=description)


VAE = _suite(("vae",), "the video VAE: encode, decode, compress/decompress in three selection modes")
DIT = _suite(("dit",), "the video DiT: forward, Euler sampling per step")
ALL = _suite(("vae", "dit"), "the VAE and the DiT, and generation DiT -> positions -> VAE decode")
