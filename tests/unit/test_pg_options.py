"""PostgreSQL source settings for standby backups (pure validation)."""

from __future__ import annotations

import pytest

from drkit.dumpers.postgres.options import parse_options
from drkit.errors import ConfigError

DSN = "host=db1 user=postgres dbname=postgres"


def _opts(**raw: object):
    return parse_options("main", {"dsn": DSN, "bin_dir": "/usr/bin", **raw})


def test_defaults_read_the_primary() -> None:
    opts = _opts()
    assert opts.backup_from == "primary" and opts.max_standby_lag == 60.0 and opts.standby_dsns() == ()


@pytest.mark.parametrize(("given", "seconds"), [(5, 5.0), (2.5, 2.5), ("90s", 90.0), ("2m", 120.0),
                                                ("500ms", 0.5), ("1h", 3600.0)])
def test_max_standby_lag_takes_seconds_or_a_time(given: object, seconds: float) -> None:
    assert _opts(standby_dsn="host=db2", backup_from="standby", max_standby_lag=given).max_standby_lag == seconds


@pytest.mark.parametrize("bad", [0, -1, "soon", "5 minutes"])
def test_a_bad_max_standby_lag_is_named(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_standby_lag"):
        _opts(standby_dsn="host=db2", max_standby_lag=bad)


def test_standbys_are_tried_in_order_standby_dsn_first() -> None:
    opts = _opts(standby_dsn="host=db2", standbys=["host=db3", "host=db4"], backup_from="prefer-standby")
    assert opts.standby_dsns() == ("host=db2", "host=db3", "host=db4")


def test_backup_from_a_standby_needs_one_and_a_known_mode() -> None:
    with pytest.raises(ConfigError, match=r"name the standby in sources\.main\.standby_dsn"):
        _opts(backup_from="standby")
    with pytest.raises(ConfigError, match="backup_from"):
        _opts(standby_dsn="host=db2", backup_from="replica")


@pytest.mark.parametrize(("field", "value"), [("standby_dsn", "host=db2 password=hunter2"),
                                              ("standbys", ["host=db3 password=hunter2"])])
def test_a_password_in_a_standby_dsn_is_refused_and_never_echoed(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        _opts(**{field: value})
    assert "must not contain a password" in str(exc.value) and "hunter2" not in str(exc.value)
    assert f"sources.main.{field}" in str(exc.value)


def test_the_receiver_is_the_sources_follower_when_asked_and_sets_the_shipping(tmp_path) -> None:  # noqa: ANN001
    import yaml

    from drkit.config import load_config
    from drkit.dumpers import dumper_for

    cfg = tmp_path / "drkit.yaml"
    cfg.write_text(yaml.safe_dump({
        "repository": {"url": f"file://{tmp_path / 'repo'}"}, "encryption": {"key_env": "K"},
        "sources": {"db": {"type": "postgres", "dsn": DSN, "bin_dir": "/usr/bin"},
                    "rx": {"type": "postgres", "dsn": DSN, "bin_dir": "/usr/bin", "receive": True,
                           "receive_seal_seconds": "2s", "receive_dir": "/var/lib/drkit/rx",
                           "receive_synchronous": True}}}))
    config = load_config(cfg)
    assert dumper_for(config, "db").follower_command("db") is None
    rx = dumper_for(config, "rx")
    assert rx.follower_command("rx") == ["pg", "receive", "--source", "rx", "--seal-seconds", "2", "--dir",
                                         "/var/lib/drkit/rx", "--synchronous"]
    ship = rx.shipping(live=False)
    assert ship.interval == 4.0 and "pg receive" in ship.how
