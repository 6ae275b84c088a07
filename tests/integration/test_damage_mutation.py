"""The mutation test of damage handling, small: one trial per (object kind, mutation) cell of
tests/integration/damage_harness.py against a real PostgreSQL's repository, one restore started
for real.  The full campaign (≥ 50 trials per kind, ~20 real starts) is bench/damage_mutation.py;
its counts are in docs/benchmarks.md."""

from __future__ import annotations

import os

import pytest
from damage_harness import CELLS, build_pristine, run_campaign


@pytest.fixture(scope="module")
def pristine():
    p = build_pristine(log=lambda s: None)
    yield p
    p.close()


def test_one_trial_per_cell_works_exactly_or_refuses_naming_the_object(pristine) -> None:
    lines: list[str] = []
    campaign = run_campaign(pristine, 1, master_seed=int(os.environ.get("DRKIT_MUTATION_SEED", "9")), starts=1,
                            log=lines.append)
    assert {(t.kind, t.op) for t in campaign.results} == set(CELLS)
    # The pristine repository gives every restore something to do, and the damage was seen.
    assert sum(t.restores_exact for t in campaign.results) > 0
    assert sum(t.restores_refused for t in campaign.results) > 0
    assert sum(t.started for t in campaign.results) == 1
    caught = [t for t in campaign.results if t.verify_caught]
    assert len(caught) >= len(CELLS) - 4, campaign.table()  # the unobservable ones: see Mutation.observable
    assert not campaign.violations, "\n".join(v.text() for v in campaign.violations) + "\n" + campaign.table()
