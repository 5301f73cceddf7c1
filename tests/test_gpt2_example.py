"""The GPT-2 example beyond the guide's walk: the published 124M size, and the guide's table of what
transformers' own check sees beside ours, measured again. Both slow (`make test-slow`)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

# found, not imported: collecting this file costs nothing where its tests are not run
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="the GPT-2 example needs the `example` extra"
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpt2_at_the_published_size_passes_parity_in_fp32_and_bf16():
    from examples.gpt2.suite import FORWARD, subject
    from parity.environment import pinned
    from parity.runner import Lineup, Settings, run_case

    gpt2 = {"gpt2": subject("gpt2")}
    with pinned():
        for precision in ("fp32", "bf16"):
            lineup = Lineup.build(gpt2, Settings(precision=precision))
            judge = lineup.settings.verdict_judge
            for result in run_case(FORWARD, lineup):
                assert result.error is None, result.error
                assert result.passed(judge), (precision, result.mode, result.first_divergent(judge))


def _verdicts(table: str) -> list[tuple[str, ...]]:
    """(port, transformers' verdict, ours, the layers ours names) of each row of the table."""
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[2] in ("pass", "FAIL"):
            rows.append((cells[0], cells[2], cells[3], *re.findall(r"`([^`]+)`", cells[4])))
    return rows


@pytest.mark.slow
def test_the_guides_table_beside_transformers_check_is_what_the_script_measures():
    from examples.gpt2.equivalence import measure, table

    rows, weights = measure("tiny", seed=0)
    measured = table(rows, weights)
    guide = (REPO / "docs" / "PORTING.md").read_text()
    assert _verdicts(measured) == _verdicts(guide)
    assert "bit-identical" in weights
