"""``verify --sample``'s arithmetic (drkit/verify_sample.py): pure, no repository."""

from __future__ import annotations

import math
import random

import pytest

from drkit.errors import ConfigError
from drkit.verify_sample import (
    RING,
    WEEK,
    arc,
    check_percent,
    choose,
    cycle_length,
    default_seed,
    in_sample,
    location_problem,
    position,
)

_RNG = random.Random(13)
PACKS = [f"{_RNG.getrandbits(128):032x}" for _ in range(4000)]  # pack ids are 128-bit random hex


@pytest.mark.parametrize("percent", [0, -1, 100.5, float("nan"), float("inf")])
def test_percent_out_of_range_is_a_config_error_naming_the_range(percent):
    with pytest.raises(ConfigError, match=r"0 < P <= 100"):
        check_percent(percent)


@pytest.mark.parametrize("percent", [0.5, 10, 12.5, 30, 33.3, 70, 99.9])
def test_consecutive_seeds_cover_every_pack_within_the_cycle(percent):
    k = cycle_length(percent)
    assert k == math.ceil(100 / percent) or k == math.ceil(100 / percent) - 1
    for first in (0, 2937, -5):
        seen: set[str] = set()
        for seed in range(first, first + k):
            seen |= choose(PACKS, percent, seed)
        assert seen == set(PACKS)
    # ... and k-1 seeds do not (checked where the arc they leave out holds 20 packs, on average).
    if k > 1 and (1 - (k - 1) * percent / 100) * len(PACKS) >= 20:
        covered = set().union(*(choose(PACKS, percent, s) for s in range(k - 1)))
        assert covered != set(PACKS)


@pytest.mark.parametrize("percent", [5, 25, 50])
def test_one_run_reads_about_percent_of_the_packs(percent):
    share = len(choose(PACKS, percent, 12)) / len(PACKS) * 100
    assert abs(share - percent) < 4  # 4000 random ids: a binomial's spread is well under that


def test_arcs_of_consecutive_seeds_are_adjacent():
    start, width = arc(25, 7)
    nxt, same = arc(25, 8)
    assert same == width == RING // 4 and nxt == (start + width) % RING
    assert arc(25, 11) == arc(25, 7)  # the cycle repeats after four seeds


def test_a_hundred_percent_reads_everything_whatever_the_seed():
    assert cycle_length(100) == 1
    assert all(choose(PACKS, 100, s) == set(PACKS) for s in (0, 1, 99))


def test_the_sample_is_a_function_of_pack_and_seed_only():
    pack = PACKS[0]
    assert 0 <= position(pack) < RING and position(pack) == position(pack)
    assert choose(PACKS[:50], 40, 3) == {p for p in PACKS[:50] if in_sample(p, 40, 3)}
    assert choose(PACKS, 40, 3) == choose(list(reversed(PACKS)), 40, 3)


def test_default_seed_is_the_week_number():
    assert default_seed(0) == 0 and default_seed(WEEK - 1) == 0 and default_seed(WEEK) == 1
    assert default_seed(1_796_000_000) == 1_796_000_000 // WEEK


def test_location_check_without_reading():
    blob = "ab" * 32
    ref = [blob, "p", 4, 100, 90]
    header = {(blob, 4, 100, 90)}
    assert location_problem(ref, 500, header, None, 4) is None
    assert location_problem(ref, None, header, None, 4).endswith("unavailable: the pack is missing")
    assert "outside the 103-byte pack" in location_problem(ref, 103, header, None, 4)
    assert "outside" in location_problem([blob, "p", 2, 100, 90], 500, header, None, 4)  # inside the magic
    assert "not in the pack's sealed header" in location_problem([blob, "p", 4, 99, 90], 500, header, None, 4)
    # A damaged header: the index files' entries decide; with neither, only the size is known.
    assert location_problem(ref, 500, None, header, 4) is None
    assert "neither the pack's header" in location_problem(ref, 500, None, {(blob, 8, 100, 90)}, 4)
    assert location_problem(ref, 500, None, None, 4) is None


def test_cli_modes_report_what_ran_and_refuse_bad_combinations(tmp_path, capsys):
    import json

    import yaml

    from drkit.cli.main import main

    key = tmp_path / "master.key"
    key.write_bytes(b"ab" * 32)
    cfg = tmp_path / "drkit.yaml"
    cfg.write_text(yaml.safe_dump({"repository": {"url": f"file://{tmp_path / 'repo'}"},
                                   "encryption": {"key_file": str(key)}}))
    main(["--config", str(cfg), "init"])
    capsys.readouterr()
    runs = {"full": [], "quick": ["--quick"], "sample": ["--sample", "12.5", "--seed", "41"]}
    for mode, extra in runs.items():
        main(["--config", str(cfg), "verify", "--json", *extra])
        doc = json.loads(capsys.readouterr().out)
        assert doc["ok"] and doc["mode"] == mode
        assert (doc["seed"], doc["sample_percent"]) == ((41, 12.5) if mode == "sample" else (None, None))
        assert doc["sampled_packs"] == 0 == doc["packs"]
    for bad in (["no-such-source"], ["--quick", "--sample", "5"], ["--sample", "0"], ["--sample", "101"], ["--seed", "3"]):
        with pytest.raises(SystemExit) as done:
            main(["--config", str(cfg), "verify", *bad])
        assert done.value.code == 2, bad
    err = capsys.readouterr().err
    assert "no source 'no-such-source' in the configuration" in err and "not both" in err and "--seed chooses the packs of --sample P" in err
