"""The parity suite can fail: each planted porting mistake is named, exactly, as the first divergent layer.

Every mistake is planted in a copy of a correct torch model; the JAX reference is captured once per case
and shared. Isolated mode is what names the cause: in carried mode every layer after the mistake differs.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from common import PRESETS, Precision
from parity.environment import pinned
from parity.runner import Lineup, Settings, run_case
from parity.suites.vae_dit import cases as C
from parity.suites.vae_dit.mistakes import catalogue
from parity.suites.vae_dit.subjects import NATURAL_NUMERICS, block_subject, dit_subject, vae_subject

MISTAKES = catalogue(steps=C.SAMPLER_STEPS)
CASES = {c.name: c for c in C.vae_cases() + C.dit_cases()}
# the case in which each mistake must show (the layer it is in runs there)
WHERE = {
    "unflipped ConvTranspose kernel": "vae.decode",
    "q and k swapped": "vae.encode",
    "LayerNorm epsilon 1e-5": "vae.encode",
    "RoPE halves interleaved": "vae.encode",
    "square kernel not transposed": "vae.decode",
    "padding mask ignored": "dit.forward",
    "sampler time one step ahead": "dit.sample",
}
ISOLATED = Settings(modes=("isolated",))


@pytest.fixture(scope="module", autouse=True)
def numerics_pinned():
    with pinned():
        yield


@pytest.fixture(scope="module")
def lineups():
    return {
        "vae": Lineup.build({"vae": vae_subject(PRESETS["vae-tiny"])}, ISOLATED),
        "dit": Lineup.build({"dit": dit_subject(PRESETS["dit-tiny"])}, ISOLATED),
    }


def first_divergent_with(lineup, mistake, case, inputs=None, judge="fp32"):
    (name,) = lineup.torch
    broken = lineup.with_torch({name: mistake.planted_copy(lineup.torch[name])})
    (result,) = run_case(case, broken, inputs)
    assert result.error is None, result.error
    return result.first_divergent(judge)


@pytest.mark.parametrize("name", list(MISTAKES))
def test_the_suite_names_exactly_the_planted_layer_first(lineups, name):
    mistake = MISTAKES[name]
    case = CASES[WHERE[name]]
    row = first_divergent_with(lineups[case.models[0]], mistake, case)
    assert row is not None, f"{name}: not caught"
    assert row.path == mistake.target, f"{name}: planted in {mistake.target!r}, first divergent {row.label!r}"
    if case.step_path is not None:  # a sampler mistake is named at the first Euler step it touches
        assert row.step == 0 and row.label.startswith("step0/")


def test_rope_mistakes_hide_at_a_single_position_which_is_why_cases_use_several_frames():
    """One FactoredAttention block: with one frame its temporal RoPE only ever sees position 0, where the
    rotation is the identity; with the cases' four frames the suite names the RoPE."""
    subject = block_subject(PRESETS["vae-tiny"])
    lineup = Lineup.build({subject.name: subject}, ISOLATED)
    case = C.block_case(subject.name)
    mistake = replace(MISTAKES["RoPE halves interleaved"], target="TemporalAttention.ROPE")
    four_frames = case.make_inputs(lineup.subjects, np.random.default_rng(0))
    one_frame = {"x": four_frames["x"][:, :1], "mask": np.ones((1, 1, 1, 1), bool)}
    assert first_divergent_with(lineup, mistake, case, one_frame) is None
    assert first_divergent_with(lineup, mistake, case, four_frames).path == mistake.target


def test_in_bf16_the_epsilon_mistake_shows_only_on_a_clip_with_small_variance():
    """bf16 rounding (about 0.4%) hides a 1e-5 vs 1e-6 epsilon on ordinary pixels; on a clip whose patches
    vary by ~3e-3 the epsilon is a third of the variance and the suite names the LayerNorm."""
    numerics = NATURAL_NUMERICS[Precision.BF16]
    settings = Settings(precision=Precision.BF16, numerics=(numerics,), modes=("isolated",))
    with pinned():
        lineup = Lineup.build({"vae": vae_subject(PRESETS["vae-tiny"])}, settings)
        case = CASES["vae.encode"]
        mistake = MISTAKES["LayerNorm epsilon 1e-5"]
        ordinary = case.make_inputs(lineup.subjects, np.random.default_rng(0))
        quiet = {**ordinary, "video": (ordinary["video"] - 0.5) * 0.01}
        assert first_divergent_with(lineup, mistake, case, ordinary, numerics.value) is None
        row = first_divergent_with(lineup, mistake, case, quiet, numerics.value)
    assert row is not None and row.path == mistake.target
