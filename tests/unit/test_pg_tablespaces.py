"""Where a physical restore puts tablespaces (pure logic; the real cluster is in
tests/integration/test_postgres_tablespaces.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drkit.dumpers.postgres.tablespaces import (
    clear_tablespaces,
    place_tablespaces,
    prepare_tablespaces,
    write_tablespace_map,
)
from drkit.errors import ConfigError, DrkitError
from drkit.repository import Manifest


def _manifest(*spaces: tuple[int, str, str]) -> Manifest:
    return Manifest("20261207T000000Z-abcdef", "pg", "postgres", "full", "t", "t", [], metadata={
        "tablespaces": [{"oid": oid, "name": name, "location": loc, "stream": f"tablespaces/{oid}.tar"}
                        for oid, name, loc in spaces]})


def test_default_places_are_beside_the_target_and_odd_names_use_the_oid(tmp_path: Path) -> None:
    m = _manifest((16400, "fast", "/srv/ts/fast"), (16401, "we/ird name", "/srv/ts/weird"))
    places = place_tablespaces(m, tmp_path / "restore", ())
    assert [(p.oid, p.directory) for p in places] == [
        (16400, tmp_path / "restore-tablespaces" / "fast"), (16401, tmp_path / "restore-tablespaces" / "16401")]


def test_a_map_moves_one_tablespace_and_leaves_the_other_at_its_default(tmp_path: Path) -> None:
    m = _manifest((16400, "fast", "/srv/ts/fast"), (16401, "slow", "/srv/ts/slow"))
    places = place_tablespaces(m, tmp_path / "r", (f"slow={tmp_path / 'disk2'}",))
    assert {p.name: p.directory for p in places} == {
        "fast": tmp_path / "r-tablespaces" / "fast", "slow": tmp_path / "disk2"}


@pytest.mark.parametrize(("item", "message"), [
    ("fast", "expected NAME=DIR"),
    ("=/x", "expected NAME=DIR"),
    ("nope=/x", "has no tablespace 'nope' (its tablespaces: fast, slow)"),
    ("fast=rel/dir", "absolute path"),
    ("fast=/srv/ts/fast", "never restores onto the source"),
    ("fast=/srv/ts/fast/deeper", "overlaps the source"),
    ("fast=/srv/ts", "overlaps the source"),
    ("fast=/srv/ts/slow", "never restores onto the source"),  # the other tablespace's source directory
])
def test_maps_that_cannot_be_honoured_are_refused(tmp_path: Path, item: str, message: str) -> None:
    m = _manifest((16400, "fast", "/srv/ts/fast"), (16401, "slow", "/srv/ts/slow"))
    with pytest.raises(ConfigError) as exc:
        place_tablespaces(m, tmp_path / "r", (item,))
    assert message in str(exc.value)


def test_the_source_directory_is_recognised_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real-ts"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    m = _manifest((16400, "fast", str(real)))
    with pytest.raises(ConfigError, match="never restores onto the source"):
        place_tablespaces(m, tmp_path / "r", (f"fast={tmp_path / 'alias'}",))


def test_two_tablespaces_in_one_directory_or_inside_the_target_are_refused(tmp_path: Path) -> None:
    m = _manifest((16400, "fast", "/srv/ts/fast"), (16401, "slow", "/srv/ts/slow"))
    with pytest.raises(ConfigError, match="would share"):
        place_tablespaces(m, tmp_path / "r", (f"fast={tmp_path / 'x'}", f"slow={tmp_path / 'x' / 'y'}"))
    with pytest.raises(ConfigError, match="overlaps the target"):
        place_tablespaces(m, tmp_path / "r", (f"fast={tmp_path / 'r' / 'ts'}",))
    with pytest.raises(ConfigError, match="twice"):
        place_tablespaces(m, tmp_path / "r", (f"fast={tmp_path / 'a'}", f"fast={tmp_path / 'b'}"))


def test_a_backup_without_tablespaces_takes_no_map(tmp_path: Path) -> None:
    assert place_tablespaces(_manifest(), tmp_path / "r", ()) == []
    with pytest.raises(ConfigError, match="its tablespaces: none"):
        place_tablespaces(_manifest(), tmp_path / "r", ("fast=/x",))


def test_a_busy_directory_is_refused_before_any_other_is_created_and_is_never_emptied(tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("mine")
    m = _manifest((16400, "fast", "/srv/ts/fast"), (16401, "slow", "/srv/ts/slow"))
    places = place_tablespaces(m, tmp_path / "r", (f"slow={busy}",))
    with pytest.raises(DrkitError, match="is not an empty directory"):
        prepare_tablespaces(places)
    clear_tablespaces(places)
    assert (busy / "keep").read_text() == "mine"
    assert not (tmp_path / "r-tablespaces").exists()


def test_a_failed_restore_removes_what_it_created_and_empties_what_it_was_given(tmp_path: Path) -> None:
    given = tmp_path / "given"
    given.mkdir()
    m = _manifest((16400, "fast", "/srv/ts/fast"), (16401, "slow", "/srv/ts/slow"))
    places = place_tablespaces(m, tmp_path / "r", (f"slow={given}",))
    prepare_tablespaces(places)
    for p in places:
        (p.directory / "PG_15_1").mkdir()
    clear_tablespaces(places)
    assert not (tmp_path / "r-tablespaces").exists()
    assert given.is_dir() and not any(given.iterdir())


def test_tablespace_map_is_escaped_as_postgresql_writes_it(tmp_path: Path) -> None:
    m = _manifest((16400, "fast", "/srv/ts/fast"))
    places = place_tablespaces(m, tmp_path / "r", (f"fast={tmp_path}/a\\b c",))
    (tmp_path / "r").mkdir()
    write_tablespace_map(tmp_path / "r", places)
    assert (tmp_path / "r" / "tablespace_map").read_text() == f"16400 {tmp_path}/a\\\\b c\n"
    assert os.sep == "/"
