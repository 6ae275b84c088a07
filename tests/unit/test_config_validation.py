"""Configuration types and ranges are checked when the file is loaded (exit 2, ConfigError).

Every message names the file, the YAML line, the field path, what the field accepts and what was
given -- before any repository is opened or any server contacted.  No servers are needed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from drkit.config import (
    Config,
    EncryptionConfig,
    RepositoryConfig,
    S3Options,
    SourceConfig,
    load_config,
    parse_config,
    read_password,
)
from drkit.dumpers.postgres.options import PgOptions
from drkit.dumpers.postgres.options import parse_options as pg_options
from drkit.dumpers.redis.options import RedisOptions
from drkit.dumpers.redis.options import parse_options as redis_options
from drkit.errors import ConfigError

MiB = 1024 * 1024
GiB = 1024 * MiB

# A repository setting goes on line 3, an s3 setting on line 5.
TEMPLATE = """\
repository:
  url: {repo}
  {repo_line}
  s3:
    {s3_line}
encryption:
  key_env: DRKIT_TEST_KEY
"""
REPO_LINE, S3_LINE = 3, 5

PACK = "(1048576 .. 1073741824)"
PART = "(5242880 .. 5368709120)"


def write(tmp_path: Path, repo_line: str = "", s3_line: str = "") -> Path:
    # The repository directory does not exist: validation must not need it.
    cfg = tmp_path / "drkit.yaml"
    cfg.write_text(TEMPLATE.format(repo=tmp_path / "no-repo", repo_line=repo_line, s3_line=s3_line))
    return cfg


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.exit_code == 2
    return str(err.value)


BAD_REPOSITORY = [
    ("pack_size: big", "pack_size", PACK, "got 'big'"),
    ("pack_size: 0", "pack_size", PACK, "got 0"),
    ("pack_size: '16777216'", "pack_size", PACK, "got '16777216'"),  # no silent str -> int
    ("pack_size: true", "pack_size", PACK, "got true"),  # a bool is not an int
    ("pack_size: 1048575", "pack_size", PACK, "got 1048575"),
    (f"pack_size: {GiB + 1}", "pack_size", PACK, f"got {GiB + 1}"),
    ("pack_size: 16.5", "pack_size", PACK, "got 16.5"),
    ("compression_level: 99", "compression_level", "zstd level (1 .. 22)", "got 99"),
    ("compression_level: 0", "compression_level", "(1 .. 22)", "got 0"),
    ("workers: -3", "workers", "(0 .. 256; 0 = one per core)", "got -3"),
    ("workers: 257", "workers", "(0 .. 256", "got 257"),
    ("workers: many", "workers", "(0 .. 256", "got 'many'"),
    ("url: 5", "url", "a URL or path", "got 5"),
    ("pack-size: 1", "pack-size", "unknown setting (allowed: compression_level,", "pack_size"),
]

BAD_S3 = [
    ("part_size: 1048576", "part_size", PART, "got 1048576"),
    (f"part_size: {6 * GiB}", "part_size", PART, f"got {6 * GiB}"),
    ("multipart_threshold: 1024", "multipart_threshold", PART, "got 1024"),
    ("multipart_threshold: 16MiB", "multipart_threshold", PART, "got '16MiB'"),
    ("max_concurrency: 0", "max_concurrency", "(1 .. 64)", "got 0"),
    ("max_concurrency: 65", "max_concurrency", "(1 .. 64)", "got 65"),
    ("connect_timeout: 0", "connect_timeout", "seconds > 0", "got 0"),
    ("connect_timeout: '10'", "connect_timeout", "seconds > 0", "got '10'"),
    ("read_timeout: -1.5", "read_timeout", "seconds > 0", "got -1.5"),
    ("read_timeout: false", "read_timeout", "seconds > 0", "got false"),
    ("read_timeout: .inf", "read_timeout", "seconds > 0", "got inf"),
    ("addressing_style: weird", "addressing_style", "one of auto, virtual, path", "got 'weird'"),
    ("sse: aes", "sse", "null, AES256 or aws:kms", "got 'aes'"),
    ("storage_class: 5", "storage_class", "a non-empty string or null", "got 5"),
    ("verify_tls: 'no'", "verify_tls", "true or false", "got 'no'"),
    ("require_object_lock: 1", "require_object_lock", "true or false", "got 1"),
    ("endpoint_url: [a]", "endpoint_url", "string or null", "got a list"),
    ("bucket: x", "bucket", "unknown setting (allowed: addressing_style, connect_timeout,", "verify_tls"),
]


@pytest.mark.parametrize(("line", "name", "allowed", "given"), BAD_REPOSITORY, ids=[b[0] for b in BAD_REPOSITORY])
def test_bad_repository_setting_names_file_line_field_range_and_value(
    tmp_path: Path, line: str, name: str, allowed: str, given: str
) -> None:
    cfg = write(tmp_path, repo_line=line)
    msg = config_error(cfg)
    assert msg.startswith(f"{cfg}: line {REPO_LINE}: repository.{name}: "), msg
    assert allowed in msg and given in msg, msg
    assert "\n" not in msg  # exactly this one problem


@pytest.mark.parametrize(("line", "name", "allowed", "given"), BAD_S3, ids=[b[0] for b in BAD_S3])
def test_bad_s3_setting_names_file_line_field_range_and_value(
    tmp_path: Path, line: str, name: str, allowed: str, given: str
) -> None:
    cfg = write(tmp_path, s3_line=line)
    msg = config_error(cfg)
    assert msg.startswith(f"{cfg}: line {S3_LINE}: repository.s3.{name}: "), msg
    assert allowed in msg and given in msg, msg
    assert "\n" not in msg


def test_every_problem_of_the_file_is_reported_at_once_one_line_each(tmp_path: Path) -> None:
    cfg = tmp_path / "drkit.yaml"
    cfg.write_text(
        "repository:\n"  # 1
        "  url: /nowhere\n"  # 2
        "  pack_size: big\n"  # 3
        "  workers: -3\n"  # 4
        "  compression_level: 99\n"  # 5
        "encryption:\n"  # 6
        "  key_file: 5\n"  # 7
        "sources:\n"  # 8
        "  a/b: {type: redis}\n"  # 9
        "  c: {dsn: x}\n"  # 10
        "  d: {type: 7}\n"  # 11
        "extra: 1\n"  # 12
    )
    lines = config_error(cfg).splitlines()
    expected = [
        (3, "repository.pack_size"), (4, "repository.workers"), (5, "repository.compression_level"),
        (7, "encryption.key_file"), (9, "sources.a/b"), (10, "sources.c.type"), (11, "sources.d.type"),
        (12, "extra"),
    ]
    assert len(lines) == len(expected), lines
    assert [int(line.split(": line ")[1].split(":")[0]) for line in lines] == [n for n, _ in expected]  # file order
    for want_line, field in expected:
        assert any(line.startswith(f"{cfg}: line {want_line}: {field}: ") for line in lines), (field, lines)
    assert any("sources.c.type: required: the datastore type" in line for line in lines)
    assert any("sources.d.type: required: the datastore type (e.g. postgres, redis), got 7" in line for line in lines)
    assert any("unknown top-level section (allowed: encryption, repository, schedules, sources, targets)" in line
               for line in lines)


def test_missing_required_field_points_at_its_section(tmp_path: Path) -> None:
    cfg = tmp_path / "drkit.yaml"
    cfg.write_text("encryption:\n  key_env: K\nrepository:\n  pack_size: 2097152\n")
    assert config_error(cfg) == f"{cfg}: line 3: repository.url: required: a URL or path " \
                                "(file:///path, /path or s3://bucket/prefix)"
    cfg.write_text("encryption:\n  key_env: K\n")  # no repository section at all: no line to name
    assert config_error(cfg) == f"{cfg}: repository.url: required: a URL or path (file:///path, /path or " \
                                "s3://bucket/prefix)"


def test_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    cfg = tmp_path / "drkit.yaml"
    cfg.write_text("repository:\n  url: /r\n  s3: [1, 2]\nencryption: key\n")
    lines = config_error(cfg).splitlines()
    assert f"{cfg}: line 3: repository.s3: expected a mapping of settings, got a list" in lines
    assert f"{cfg}: line 4: encryption: expected a mapping of settings, got 'key'" in lines


@pytest.mark.parametrize(
    ("encryption", "got"),
    [("{}", "none"), ("{key_env: A, kms_key_id: arn:k}", "key_env, kms_key_id"), ("{key_env: A, key_file: /k}",
                                                                                  "key_file, key_env")],
)
def test_exactly_one_key_source(tmp_path: Path, encryption: str, got: str) -> None:
    cfg = tmp_path / "drkit.yaml"
    cfg.write_text(f"repository:\n  url: /r\nencryption: {encryption}\n")
    assert config_error(cfg) == (f"{cfg}: line 3: encryption: needs exactly one of key_file, key_env, kms_key_id "
                                 f"(got {got})")


def test_unknown_encryption_setting_lists_the_allowed_ones(tmp_path: Path) -> None:
    cfg = tmp_path / "drkit.yaml"
    cfg.write_text("repository:\n  url: /r\nencryption:\n  key_env: A\n  keyfile: /k\n")
    assert config_error(cfg) == (f"{cfg}: line 5: encryption.keyfile: unknown setting (allowed: key_env, key_file, "
                                 "kms_endpoint_url, kms_key_id, kms_region)")


def test_sse_kms_key_id_needs_sse_kms(tmp_path: Path) -> None:
    cfg = write(tmp_path, s3_line="sse_kms_key_id: alias/x")
    assert config_error(cfg) == f"{cfg}: line {S3_LINE}: repository.s3.sse_kms_key_id: applies only with sse: aws:kms"
    cfg.write_text(cfg.read_text().replace("sse_kms_key_id: alias/x", "{sse: aws:kms, sse_kms_key_id: alias/x}"))
    assert load_config(cfg).repository.s3.sse_kms_key_id == "alias/x"


# -- good configurations (the shapes the repository's tests, benchmarks and demo write) -----------


def test_good_configurations_still_parse(tmp_path: Path) -> None:
    key = tmp_path / "master.key"
    shapes = [
        {"repository": {"url": f"file://{tmp_path / 'repo'}"}, "encryption": {"key_file": str(key)},
         "sources": {"main": {"type": "postgres", "dsn": "host=/tmp port=5432"}}},
        {"repository": {"url": "s3://bucket/prefix",
                        "s3": {"endpoint_url": "http://127.0.0.1:9000", "region": "us-east-1",
                               "addressing_style": "path"}},
         "encryption": {"kms_key_id": "arn:aws:kms:us-east-1:1:key/x", "kms_endpoint_url": "http://127.0.0.1:9000",
                        "kms_region": "us-east-1"}},
        {"repository": {"url": f"file://{tmp_path / 'repo'}"}, "encryption": {"key_file": str(key)},
         "sources": {"cache": {"type": "redis", "url": "redis://127.0.0.1:1"}}, "schedules": {}, "targets": {}},
        {"repository": {"url": "repo", "pack_size": MiB, "compression_level": 22, "workers": 256,
                        "s3": {"part_size": 5 * MiB, "multipart_threshold": 5 * GiB, "max_concurrency": 64,
                               "connect_timeout": 1, "read_timeout": 0.5, "sse": "AES256", "storage_class": None,
                               "region": None, "verify_tls": False, "require_object_lock": True}},
         "encryption": {"key_file": "master.key"}},
    ]
    for data in shapes:
        cfg = tmp_path / "drkit.yaml"
        cfg.write_text(yaml.safe_dump(data))
        config = load_config(cfg)
        assert isinstance(config, Config)
        assert config.repository.url.startswith(("file:///", "s3://"))
    # the last one: relative paths resolved against the file's directory, ints stay ints
    assert config.repository.url == f"file://{tmp_path / 'repo'}"
    assert config.encryption.key_file == key
    assert config.repository.s3.connect_timeout == 1.0 and config.repository.pack_size == MiB
    assert config.repository.s3.region is None and config.repository.s3.verify_tls is False


def test_defaults_when_only_required_settings_are_given(tmp_path: Path) -> None:
    cfg = write(tmp_path)  # empty placeholder lines, "s3:" with nothing under it
    config = load_config(cfg)
    assert config.repository.s3 == S3Options()
    assert (config.repository.pack_size, config.repository.compression_level, config.repository.workers) == (
        16 * MiB, 3, 0)
    assert config.encryption == EncryptionConfig(key_env="DRKIT_TEST_KEY")


def test_parse_config_without_a_file_still_works() -> None:
    config = parse_config({"repository": {"url": "/srv/r"}, "encryption": {"key_env": "K"},
                           "sources": {"a": {"type": "redis", "url": "redis://h"}}})
    assert config.repository.url == "file:///srv/r"
    assert config.source("a") == SourceConfig("a", "redis", {"url": "redis://h"})
    with pytest.raises(ConfigError, match=r"^config: repository.pack_size: expected an integer number of bytes"):
        parse_config({"repository": {"url": "/r", "pack_size": "x"}, "encryption": {"key_env": "K"}})


def test_code_built_objects_keep_their_api() -> None:
    enc = EncryptionConfig(key_file=Path("/k"), key_env=None)
    repo = RepositoryConfig("file:///r")
    moved = RepositoryConfig(**{**repo.__dict__, "url": "file:///elsewhere"})
    assert moved.url == "file:///elsewhere" and moved.s3 == repo.s3
    assert [f.name for f in dataclasses.fields(S3Options)][:2] == ["endpoint_url", "region"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        enc.key_env = "X"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        repo.s3.part_size = 1  # type: ignore[misc]


# -- the dumpers' own sections --------------------------------------------------------------------

PG_BAD = [
    ({"checkpoint": "slow"}, "checkpoint", "expected fast or spread, got 'slow'"),
    ({"databases": "app"}, "databases", "expected a list of database names, got 'app'"),
    ({"databases": ["app", 5]}, "databases[1]", "got 5"),
    ({"max_rate": "fast"}, "max_rate", "a rate such as 100M or 32768k"),
    ({"data_dir": "relative/dir"}, "data_dir", "expected an absolute path or null, got 'relative/dir'"),
    ({"data_dir": 5}, "data_dir", "or null, got 5"),
    ({"os_user": 0}, "os_user", "expected a non-empty string, got 0"),
    ({"password_env": True}, "password_env", "expected a non-empty string or null, got true"),
    ({"password_file": ["a"]}, "password_file", "expected a path or null, got a list"),
    ({"bin_dir": 3}, "bin_dir", "expected a path, got 3"),
    ({"checkpint": "fast"}, "checkpint", "unknown setting (allowed: backup_from, bin_dir, checkpoint, data_dir, databases, dsn,"),
    ({"source": "other"}, "source", "unknown setting"),  # the InitVar is not a setting of the file
]


@pytest.mark.parametrize(("extra", "name", "text"), PG_BAD, ids=[b[1] for b in PG_BAD])
def test_postgres_options_are_typed(extra: dict, name: str, text: str) -> None:
    with pytest.raises(ConfigError) as err:
        pg_options("main", {"dsn": "host=/tmp", "bin_dir": "/usr/bin", **extra})
    msg = str(err.value)
    assert msg.startswith(f"sources.main.{name}: "), msg
    assert text in msg and "\n" not in msg, msg


def test_postgres_good_options_keep_their_api() -> None:
    opts = pg_options("main", {"dsn": "host=/tmp", "bin_dir": "/usr/bin", "databases": ["a", "b"], "max_rate": 1024,
                               "data_dir": "/var/lib/pg", "password_file": "/etc/pw", "checkpoint": "spread"})
    assert isinstance(opts, PgOptions)
    assert opts.databases == ("a", "b") and opts.max_rate == "1024" and opts.checkpoint == "spread"
    assert opts.data_dir == Path("/var/lib/pg") and opts.password_file == Path("/etc/pw")
    assert opts.bin_dir == Path("/usr/bin") and opts.os_user == "postgres"
    assert pg_options("main", {"dsn": "host=/tmp", "bin_dir": "/usr/bin", "databases": None}).databases == ()
    with pytest.raises(ConfigError, match="must not contain a password") as err:
        pg_options("main", {"dsn": "host=/tmp password=hunter2", "bin_dir": "/usr/bin"})
    assert "hunter2" not in str(err.value)


REDIS_BAD = [
    ({"connect_timeout": "10"}, "connect_timeout", "expected a number of seconds > 0, got '10'"),
    ({"sync_timeout": 0}, "sync_timeout", "expected a number of seconds > 0, got 0"),
    ({"slice_seconds": True}, "slice_seconds", "got true"),
    ({"data_dir": 3}, "data_dir", "expected a path or null, got 3"),
    ({"username": 5}, "username", "expected a non-empty string or null, got 5"),
    ({"port": 7000}, "port", "unknown setting (allowed: connect_timeout, data_dir,"),  # port comes from url
]


@pytest.mark.parametrize(("extra", "name", "text"), REDIS_BAD, ids=[b[1] for b in REDIS_BAD])
def test_redis_options_are_typed(extra: dict, name: str, text: str) -> None:
    with pytest.raises(ConfigError) as err:
        redis_options("cache", {"url": "redis://127.0.0.1:6379", **extra})
    msg = str(err.value)
    assert msg.startswith(f"sources.cache.{name}: "), msg
    assert text in msg and "\n" not in msg, msg


def test_redis_good_options_keep_their_api() -> None:
    opts = redis_options("cache", {"url": "redis://app@10.0.0.5:7000", "connect_timeout": 3, "data_dir": "/var/r"})
    assert isinstance(opts, RedisOptions)
    assert (opts.host, opts.port, opts.username, opts.connect_timeout) == ("10.0.0.5", 7000, "app", 3.0)
    assert opts.data_dir == Path("/var/r") and opts.url == "redis://10.0.0.5:7000"
    # built in code (e.g. a restore target), as before
    assert RedisOptions(host="h", port=1, password_env=None).password() is None


# -- passwords ------------------------------------------------------------------------------------


def test_unset_password_env_is_a_config_error_naming_variable_and_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRKIT_TEST_REDIS_PW", raising=False)
    opts = redis_options("cache", {"url": "redis://127.0.0.1:1", "password_env": "DRKIT_TEST_REDIS_PW"})
    with pytest.raises(ConfigError) as err:
        opts.password()
    assert err.value.exit_code == 2
    assert str(err.value) == ("sources.cache: password_env DRKIT_TEST_REDIS_PW is not set in the environment of this "
                              "process; export it or use password_file")
    # the client is never built (so nothing connects) without the password the source asks for
    with pytest.raises(ConfigError, match="DRKIT_TEST_REDIS_PW"):
        opts.client()
    monkeypatch.setenv("DRKIT_TEST_REDIS_PW", "s3cret")
    assert opts.password() == "s3cret"


def test_postgres_unset_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRKIT_TEST_PG_PW", raising=False)
    opts = pg_options("main", {"dsn": "host=/tmp", "bin_dir": "/usr/bin", "password_env": "DRKIT_TEST_PG_PW"})
    with pytest.raises(ConfigError, match=r"^sources.main: password_env DRKIT_TEST_PG_PW is not set"):
        opts.password()
    # tools that only read files (pg_waldump, pg_controldata) still get an environment
    env = opts.env()
    assert "PGPASSWORD" not in env and env["TZ"] == "UTC"
    monkeypatch.setenv("DRKIT_TEST_PG_PW", "pw")
    assert opts.env()["PGPASSWORD"] == "pw"


def test_read_password_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRKIT_TEST_PW", raising=False)
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    assert read_password(None, None) is None  # neither setting: no password
    assert read_password(None, pw) == "from-file"
    assert read_password("DRKIT_TEST_PW", pw) == "from-file"  # the file is the fallback
    with pytest.raises(ConfigError, match=r"^password_env DRKIT_TEST_PW is not set in the environment"):
        read_password("DRKIT_TEST_PW", None)
    monkeypatch.setenv("DRKIT_TEST_PW", "from-env")
    assert read_password("DRKIT_TEST_PW", pw) == "from-env"
    with pytest.raises(ConfigError, match="cannot read password_file"):
        read_password(None, tmp_path / "missing")


# -- the command line -----------------------------------------------------------------------------


def test_cli_list_with_bad_config_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from drkit.cli.main import main

    cfg = write(tmp_path, repo_line="pack_size: big", s3_line="max_concurrency: 0")
    with pytest.raises(SystemExit) as done:
        main(["--config", str(cfg), "list"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert f"drkit: error: {cfg}: line {REPO_LINE}: repository.pack_size: expected an integer number of bytes " \
           f"{PACK}, got 'big'" in err
    assert f"{cfg}: line {S3_LINE}: repository.s3.max_concurrency: expected an integer number of parallel uploads " \
           "(1 .. 64), got 0" in err
    assert "unexpected error" not in err
    assert not (tmp_path / "no-repo").exists()  # the repository was never opened (or created)
