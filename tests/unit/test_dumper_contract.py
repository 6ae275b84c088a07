"""The dumper contract, checked over every installed dumper (``available_dumpers()``).

A new datastore plugin gets these for free: its declared restore options are well-formed, use the
standard names (drkit/dumpers/options.py STANDARD) with their one meaning and clash with no option
of the core, ``drkit restore SOURCE --help`` lists them and refuses what it does not declare, its
backup types are declared and its restore points are implemented.  The checker itself is tested on
deliberately bad declarations, so a pass means something.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType

import click
import pytest
import yaml
from click.testing import CliRunner

from drkit.catalog import Catalog, RestorePoints
from drkit.config import SourceConfig
from drkit.dumpers import Dumper, RestoreRequest, RestoreResult, available_dumpers
from drkit.dumpers.options import STANDARD, OptionSpec, resolve_options, spec_problems
from drkit.errors import ConfigError

DUMPERS = available_dumpers()


def _restore_command() -> click.Command:
    from drkit.cli.main import _register_plugins, cli

    _register_plugins()
    return cli.commands["restore"]


def _core_flags_and_dests() -> tuple[list[str], list[str]]:
    cmd = _restore_command()
    flags = [o for p in cmd.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)]
    return [*flags, "--help", "-h"], [p.name for p in cmd.params if p.name]


def _config(tmp_path: Path, sources: dict[str, str], **options: dict) -> Path:
    """A configuration naming ``sources`` (name -> datastore type; ``options[name]``: its settings)."""
    key = tmp_path / "master.key"
    key.write_text(os.urandom(32).hex())
    cfg = tmp_path / "drkit.yaml"
    cfg.write_text(yaml.safe_dump({
        "repository": {"url": f"file://{tmp_path / 'repo'}"}, "encryption": {"key_file": str(key)},
        "sources": {name: {"type": kind, **options.get(name, {})} for name, kind in sources.items()}}))
    return cfg


def _invoke(cfg: Path | None, *args: str):
    from drkit.cli.main import cli

    _restore_command()
    env = {"DRKIT_CONFIG": ""}  # never the caller's configuration
    return CliRunner().invoke(cli, [*(["--config", str(cfg)] if cfg else []), *args], env=env)


def test_at_least_the_builtin_dumpers_are_installed() -> None:
    assert {"postgres", "redis"} <= set(DUMPERS)


# -- every installed dumper ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DUMPERS))
def test_declared_restore_options_are_valid_and_clash_with_no_core_option(name: str) -> None:
    cls = DUMPERS[name]
    assert isinstance(cls.restore_options, tuple)
    flags, dests = _core_flags_and_dests()
    assert spec_problems(cls.restore_options, reserved_flags=flags, reserved_dests=dests) == []


@pytest.mark.parametrize("name", sorted(DUMPERS))
def test_standard_names_have_their_standard_meaning(name: str) -> None:
    for spec in DUMPERS[name].restore_options:
        for flag in spec.flags:
            if flag in STANDARD:
                std = STANDARD[flag]
                assert (spec.kind, spec.multiple, spec.dest) == (std.kind, std.multiple, std.dest), flag


@pytest.mark.parametrize("name", sorted(DUMPERS))
def test_backup_types_are_declared(name: str) -> None:
    types = DUMPERS[name].backup_types
    assert types and all(isinstance(t, str) and t.isidentifier() for t in types)
    assert len(set(types)) == len(types)


@pytest.mark.parametrize("name", sorted(DUMPERS))
def test_restore_points_is_implemented_and_pure_on_an_empty_catalog(name: str) -> None:
    cls = DUMPERS[name]
    assert "restore_points" not in getattr(cls, "__abstractmethods__", ())
    assert cls.restore_points is not Dumper.restore_points
    dumper = cls.__new__(cls)  # restore_points is pure: no configuration, no connection needed
    points = dumper.restore_points(Catalog(source="s", manifests=[], logs=[]))
    assert isinstance(points, RestorePoints) and points.points == [] and points.intervals() == []


@pytest.mark.parametrize("name", sorted(DUMPERS))
def test_restore_source_help_lists_the_dumpers_options(name: str, tmp_path: Path) -> None:
    cls = DUMPERS[name]
    res = _invoke(_config(tmp_path, {"src": name}), "restore", "src", "--help")
    assert res.exit_code == 0, res.output
    assert "--target-dir" in res.output and "--point-in-time" in res.output  # the common options too
    for spec in cls.restore_options:
        for flag in spec.flags:
            assert flag in res.output, (flag, res.output)
    if cls.restore_options:
        assert f"Options of {cls.datastore} sources" in res.output


@pytest.mark.parametrize("name", sorted(DUMPERS))
def test_an_undeclared_option_exits_2_naming_it_and_the_datastore(name: str, tmp_path: Path) -> None:
    res = _invoke(_config(tmp_path, {"src": name}), "restore", "src", "--no-such-flag", "--target-dir",
                  str(tmp_path / "t"))
    assert res.exit_code == 2
    assert "--no-such-flag" in res.output and f"type {DUMPERS[name].datastore}" in res.output


@pytest.mark.parametrize("name", sorted(DUMPERS))
def test_describe_result_returns_lines(name: str) -> None:
    result = RestoreResult("s", "b", None, None, {"download": 0.0}, {})
    lines = DUMPERS[name].describe_result(result)
    assert isinstance(lines, list) and all(isinstance(line, str) for line in lines)


# -- the core CLI and the request ---------------------------------------------------------------


def test_restore_help_without_a_source_or_a_config_shows_the_common_options(tmp_path: Path) -> None:
    for res in (_invoke(None, "restore", "--help"), _invoke(None, "restore", "src", "--help"),
                _invoke(_config(tmp_path, {"src": "redis"}), "restore", "--help")):
        assert res.exit_code == 0, res.output
        assert "--target-dir" in res.output and "'drkit restore SOURCE --help'" in res.output
        assert "--flush" not in res.output and "--keep-archiving" not in res.output
    assert "no configuration" in _invoke(None, "restore", "src", "--help").output


def test_a_datastores_option_is_refused_for_another_datastore(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"pg": "postgres", "cache": "redis"})
    res = _invoke(cfg, "restore", "pg", "--flush", "--target-dir", str(tmp_path / "t"))
    assert res.exit_code == 2 and "--flush" in res.output and "type postgres" in res.output
    res = _invoke(cfg, "restore", "cache", "--keep-archiving", "--target-dir", str(tmp_path / "t"))
    assert res.exit_code == 2 and "--keep-archiving" in res.output and "type redis" in res.output


@pytest.mark.parametrize(("extra", "want"), [
    ([], {"to": None, "to_password_env": None, "drop": False}),
    (["--flush"], {"to": None, "to_password_env": None, "drop": True}),
    (["--drop", "--to", "redis://h:1", "--to-password-env", "PW"], {"to": "redis://h:1", "to_password_env": "PW",
                                                                    "drop": True}),
])
def test_dumper_options_reach_the_request_by_dest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  extra: list[str], want: dict) -> None:
    from drkit import ops

    seen: list[RestoreRequest] = []

    def fake_restore(config, request):
        seen.append(request)
        return RestoreResult("cache", "b1", request.target_dir, None, {"download": 0.0},
                             {"keys": 3, "keys_expired_by_then": 1})

    monkeypatch.setattr(ops, "restore", fake_restore)
    res = _invoke(_config(tmp_path, {"cache": "redis"}), "restore", "cache", "--target-dir", str(tmp_path / "t"),
                  *extra)
    assert res.exit_code == 0, res.output
    assert dict(seen[-1].options) == want
    assert "keys restored: 3 (expired by then, not restored: 1)" in res.output  # the dumper's describe_result


def test_the_old_postgres_spelling_into_dsn_is_the_standard_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from drkit import ops

    seen: list[RestoreRequest] = []
    monkeypatch.setattr(ops, "restore", lambda config, request: (seen.append(request), RestoreResult(
        "pg", "b1", request.target_dir, None, {"download": 0.0}, {}))[1])
    res = _invoke(_config(tmp_path, {"pg": "postgres"}), "restore", "pg", "--backup", "b1", "--target-dir",
                  str(tmp_path / "t"), "--database", "app", "--into-dsn", "host=h dbname=x", "--keep-archiving")
    assert res.exit_code == 0, res.output
    assert dict(seen[-1].options) == {"keep_archiving": True, "to": "host=h dbname=x", "database": "app",
                                      "tablespace_map": ()}


def test_backup_type_is_checked_against_the_sources_dumper(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from drkit.cli.main import main

    cfg = _config(tmp_path, {"cache": "redis"})
    with pytest.raises(SystemExit) as done:
        main(["--config", str(cfg), "backup", "cache", "--type", "logical"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "'logical'" in err and "full, incremental" in err and "cache" in err


def test_request_options_are_read_only_and_undeclared_keys_refused() -> None:
    source = SourceConfig("cache", "redis", {})
    req = RestoreRequest(source=source, target_dir=None, options={"drop": True})
    assert isinstance(req.options, MappingProxyType) and req.options["drop"] is True and req.options["to"] is None
    with pytest.raises(TypeError):
        req.options["drop"] = False  # type: ignore[index]
    with pytest.raises(ConfigError, match="'flush'.*--drop"):
        RestoreRequest(source=source, target_dir=None, options={"flush": True})  # the alias is a flag, not a key
    with pytest.raises(ConfigError, match="takes a bool"):
        RestoreRequest(source=source, target_dir=None, options={"drop": "yes"})


# -- the contract check itself catches bad declarations -----------------------------------------


@pytest.mark.parametrize(("spec", "problem"), [
    (OptionSpec("--to", "a flag called --to", kind=bool), "--to has one meaning"),
    (OptionSpec("--target", "into a server", aliases=("--drop",)), "--drop has one meaning"),
    (OptionSpec("--database", "one db", multiple=True), "--database has one meaning"),
    (OptionSpec("--drop", "replace", kind=bool, dest="flush"), "--drop has one meaning"),
    (OptionSpec("-x", "short"), "'-x' is not a long option name"),
    (OptionSpec("--Bad_Flag", "upper case"), "'--Bad_Flag' is not a long option name"),
    (OptionSpec("--port", "clashes with the core"), "--port is declared twice"),
    (OptionSpec("--my-port", "dest clashes with the core", dest="port"), "dest 'port' is used twice"),
    (OptionSpec("--quiet", "", kind=bool), "--quiet has no help text"),
    (OptionSpec("--when", "a date", kind=dict), "kind"),
    (OptionSpec("--n", "a number", kind=int, default="three"), "default 'three' does not fit"),
])
def test_the_contract_check_rejects(spec: OptionSpec, problem: str) -> None:
    flags, dests = _core_flags_and_dests()
    problems = spec_problems([spec], reserved_flags=flags, reserved_dests=dests)
    assert any(problem in p for p in problems), problems


def test_the_contract_check_rejects_duplicates_and_accepts_a_good_declaration() -> None:
    good = (OptionSpec("--to", "into a server"), OptionSpec("--drop", "replace", kind=bool, aliases=("--wipe",)),
            OptionSpec("--namespace", "only these", multiple=True), OptionSpec("--level", "how much", kind=int,
                                                                              default=3))
    assert spec_problems(good) == []
    assert any("--to is declared twice" in p for p in spec_problems([*good, OptionSpec("--to", "again")]))
    assert resolve_options(good, {"namespace": ["a.b"]}, what="x") == {
        "to": None, "drop": False, "namespace": ("a.b",), "level": 3}


def test_a_dumper_with_unusable_options_is_refused_by_the_cli() -> None:
    from drkit.cli.main import SourceOptionsCommand
    from drkit.errors import DrkitError

    class Bad(Dumper):
        datastore = "bad"
        restore_options = (OptionSpec("--port", "mine"),)

    cmd = _restore_command()
    assert isinstance(cmd, SourceOptionsCommand)
    with pytest.raises(DrkitError, match="--port is declared twice"):
        cmd.dumper_params(Bad)


def test_postgres_logical_only_options_are_refused_for_a_physical_restore(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from drkit.cli.main import main

    cfg = _config(tmp_path, {"pg": "postgres"}, pg={"dsn": "host=127.0.0.1 port=1 user=postgres"})
    (tmp_path / "repo").mkdir()
    main(["--config", str(cfg), "init"])
    with pytest.raises(SystemExit) as done:
        main(["--config", str(cfg), "restore", "pg", "--target-dir", str(tmp_path / "t"), "--to", "host=h"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "--to/--into-dsn apply to logical backups" in err
    assert not (tmp_path / "t").exists()  # refused before the target was touched


def test_redis_to_password_env_naming_an_unset_variable_is_refused_up_front(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from drkit.cli.main import main

    monkeypatch.delenv("DRKIT_TEST_UNSET_PW", raising=False)
    cfg = _config(tmp_path, {"cache": "redis"}, cache={"url": "redis://127.0.0.1:1"})
    (tmp_path / "repo").mkdir()
    main(["--config", str(cfg), "init"])
    with pytest.raises(SystemExit) as done:
        main(["--config", str(cfg), "restore", "cache", "--to", "redis://127.0.0.1:1", "--to-password-env",
              "DRKIT_TEST_UNSET_PW"])
    assert done.value.code == 2
    assert "DRKIT_TEST_UNSET_PW is not set" in capsys.readouterr().err
