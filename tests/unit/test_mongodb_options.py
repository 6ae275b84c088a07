"""Settings of a ``type: mongodb`` source (drkit.dumpers.mongodb.options); no server needed.

pymongo clients are built with ``connect=False`` and never used: nothing here connects.
"""

from __future__ import annotations

from typing import Any

import pymongo
import pytest

from drkit.dumpers.mongodb.options import MongoOptions, check_uri, make_client, parse_options
from drkit.errors import ConfigError

SECRET = "Tr0ub4dor-and-3"  # never to appear in an error message or a client's URI


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_options("records", raw)
    assert exc.value.exit_code == 2
    return str(exc.value)


class Spy:
    """Records what make_client hands pymongo.MongoClient (and still builds the real client)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []
        real = pymongo.MongoClient
        spy = self

        class Recording(real):  # type: ignore[misc, valid-type]
            def __init__(self, host: Any = None, *args: Any, **kwargs: Any) -> None:
                spy.calls.append((host, dict(kwargs)))
                super().__init__(host, *args, **kwargs)

        monkeypatch.setattr(pymongo, "MongoClient", Recording)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    return Spy(monkeypatch)


# -- parse_options ---------------------------------------------------------------------------------

def test_minimal_settings_and_defaults():
    opts = parse_options("records", {"uri": "mongodb://db1:27017/?replicaSet=rs0"})
    assert isinstance(opts, MongoOptions)
    assert opts.uri == opts.url == "mongodb://db1:27017/?replicaSet=rs0"
    assert (opts.read_preference, opts.parallel, opts.slice_mib, opts.tls) == ("primary", 2, 64, False)
    assert opts.include == [] and opts.exclude == []
    assert opts.password() is None


def test_full_settings_are_taken(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    opts = parse_options("records", {
        "uri": "mongodb://db1:27017/?replicaSet=rs0", "username": "backup", "password_file": str(pw),
        "auth_source": "admin", "read_preference": "secondaryPreferred", "include": ["records", "billing.inv*"],
        "exclude": ["records.tmp_*"], "parallel": 4, "slice_seconds": 30, "slice_mib": 8})
    assert opts.username == "backup" and opts.auth_source == "admin"
    assert opts.read_preference == "secondaryPreferred"
    assert opts.include == ["records", "billing.inv*"] and opts.exclude == ["records.tmp_*"]
    assert (opts.parallel, opts.slice_seconds, opts.slice_mib) == (4, 30.0, 8)
    assert opts.password() == SECRET


@pytest.mark.parametrize("raw", [{}, {"uri": ""}, {"uri": 27017}, {"username": "backup"}])
def test_uri_is_required(raw):
    msg = refused(raw)
    assert "sources.records.uri is required" in msg and "mongodb://" in msg


@pytest.mark.parametrize("uri", [
    f"mongodb://backup:{SECRET}@db1:27017/?replicaSet=rs0",
    f"mongodb+srv://backup:{SECRET}@cluster0.example.com/",
    f"mongodb://backup:{SECRET}@db1/",
])
def test_password_in_the_uri_is_refused_without_echoing_it(uri):
    msg = refused({"uri": uri})
    assert "sources.records.uri" in msg and "must not contain a password" in msg
    assert "password_env" in msg and "password_file" in msg
    assert SECRET not in msg


def test_empty_password_in_the_uri_is_refused_too():
    assert "must not contain a password" in refused({"uri": "mongodb://backup:@db1:27017/"})


def test_percent_encoded_password_is_refused_without_echoing_it():
    msg = refused({"uri": "mongodb://backup:p%40ss%3Aw0rd@db1:27017/"})
    assert "must not contain a password" in msg
    assert "p%40ss" not in msg and "p@ss" not in msg


@pytest.mark.parametrize("uri", [
    "mongodb+srv://cluster0.example.com/?authSource=admin",
    "mongodb+srv://backup@cluster0.example.com/",
    "mongodb://backup@db1:27017/?authSource=admin",
    "mongodb://db1,db2:27017/?replicaSet=rs0",
    "mongodb://[::1]:27017/",
])
def test_uris_without_password_are_accepted(uri):
    assert parse_options("records", {"uri": uri}).uri == uri
    check_uri(uri, "x")  # no exception


@pytest.mark.parametrize(("uri", "said"), [
    ("http://db1:27017/", "must look like mongodb://"),
    ("postgres://db1/", "must look like mongodb://"),
    ("mongodb://", "must look like mongodb://"),
    ("db1:27017", "must look like mongodb://"),
    ("mongodb://db1:99999/", "is not a valid mongodb:// URI"),
])
def test_not_a_mongodb_uri_is_refused(uri, said):
    msg = refused({"uri": uri})
    assert "sources.records.uri" in msg and said in msg


def test_unknown_setting_is_named_with_the_allowed_ones():
    msg = refused({"uri": "mongodb://db1:27017/", "replica_set": "rs0"})
    assert "sources.records.replica_set" in msg and "unknown setting" in msg
    assert "read_preference" in msg and "uri" in msg


def test_password_setting_is_unknown_and_not_echoed():
    msg = refused({"uri": "mongodb://db1:27017/", "password": SECRET})
    assert "sources.records.password" in msg and "unknown setting" in msg
    assert SECRET not in msg


def test_bad_read_preference_names_the_field_the_choices_and_the_value():
    msg = refused({"uri": "mongodb://db1:27017/", "read_preference": "secondaryish"})
    assert "sources.records.read_preference" in msg
    assert "secondaryPreferred" in msg and "nearest" in msg and "secondaryish" in msg


@pytest.mark.parametrize(("pattern", "said"), [
    ("rec$ords", "'rec$ords'"),
    (".orders", "no database part"),
    ("records.", "empty collection part"),
    ("", "non-empty string"),
    ("my db.orders", "character MongoDB refuses"),
])
def test_bad_namespace_pattern_in_include_is_refused(pattern, said):
    msg = refused({"uri": "mongodb://db1:27017/", "include": ["ok", pattern]})
    assert "include" in msg and said in msg


def test_bad_namespace_pattern_in_exclude_is_refused():
    msg = refused({"uri": "mongodb://db1:27017/", "exclude": ["records.tmp$"]})
    assert "exclude" in msg and "'records.tmp$'" in msg


def test_include_must_be_a_list():
    msg = refused({"uri": "mongodb://db1:27017/", "include": "records"})
    assert "sources.records.include" in msg and "list" in msg


@pytest.mark.parametrize(("field", "value"), [("parallel", 0), ("parallel", 65), ("slice_mib", 0)])
def test_out_of_range_numbers_are_named(field, value):
    msg = refused({"uri": "mongodb://db1:27017/", field: value})
    assert f"sources.records.{field}" in msg and str(value) in msg


def test_password_env_not_set_is_a_config_error_naming_the_source(monkeypatch):
    monkeypatch.delenv("DRKIT_TEST_MONGO_PW_UNSET", raising=False)
    opts = parse_options("records", {"uri": "mongodb://db1:27017/", "password_env": "DRKIT_TEST_MONGO_PW_UNSET"})
    with pytest.raises(ConfigError) as exc:
        opts.password()
    assert "sources.records" in str(exc.value) and "DRKIT_TEST_MONGO_PW_UNSET" in str(exc.value)


# -- make_client -----------------------------------------------------------------------------------

def test_password_goes_to_pymongo_as_a_keyword_never_in_the_uri(spy):
    client = make_client("mongodb://db1:27017/?replicaSet=rs0", username="backup", password=SECRET,
                         auth_source="admin", connect=False)
    try:
        ((host, kwargs),) = spy.calls
        assert host == "mongodb://db1:27017/?replicaSet=rs0"
        assert SECRET not in str(host)
        assert kwargs["password"] == SECRET and kwargs["username"] == "backup" and kwargs["authSource"] == "admin"
        cred = client.options.pool_options._credentials
        assert (cred.username, cred.password, cred.source) == ("backup", SECRET, "admin")
        assert SECRET not in repr(client)
        assert client.options.replica_set_name == "rs0"
    finally:
        client.close()


def test_options_client_reads_the_password_from_the_environment(spy, monkeypatch):
    monkeypatch.setenv("DRKIT_TEST_MONGO_PW", SECRET)
    opts = parse_options("records", {"uri": "mongodb://db1:27017/", "username": "backup",
                                     "password_env": "DRKIT_TEST_MONGO_PW", "connect_timeout": 3})
    client = opts.client(connect=False)
    try:
        ((host, kwargs),) = spy.calls
        assert host == "mongodb://db1:27017/" and kwargs["password"] == SECRET
        assert client.options.pool_options._credentials.password == SECRET
        assert client.options.server_selection_timeout == 3.0
        assert client.options.pool_options.connect_timeout == 3.0
        assert SECRET not in repr(client)
    finally:
        client.close()


def test_no_password_means_no_credentials():
    client = make_client("mongodb://db1:27017/", connect=False)
    try:
        assert client.options.pool_options._credentials is None
    finally:
        client.close()


def test_drkit_defaults_apply_when_the_uri_does_not_set_them():
    client = make_client("mongodb://db1:27017/", read_preference="secondaryPreferred", timeout=4, connect=False)
    try:
        o = client.options
        assert o.server_selection_timeout == 4.0 and o.pool_options.connect_timeout == 4.0
        assert o.read_preference.mongos_mode == "secondaryPreferred"
        assert o.codec_options.tz_aware is True
        assert o.pool_options.metadata["application"] == {"name": "drkit"}
    finally:
        client.close()


@pytest.mark.parametrize("query", [
    "serverSelectionTimeoutMS=1234&connectTimeoutMS=777&readPreference=nearest",
    "serverselectiontimeoutms=1234&CONNECTTIMEOUTMS=777&readpreference=nearest",  # option names ignore case
])
def test_uri_options_win_over_drkit_defaults(query):
    client = make_client(f"mongodb://db1:27017/?{query}", read_preference="secondary", timeout=9, connect=False)
    try:
        o = client.options
        assert o.server_selection_timeout == 1.234
        assert o.pool_options.connect_timeout == 0.777
        assert o.read_preference.mongos_mode == "nearest"
    finally:
        client.close()


def test_uri_option_wins_for_one_setting_while_drkit_sets_the_others():
    client = make_client("mongodb://db1:27017/?readPreference=secondary", read_preference="nearest", timeout=6,
                         connect=False)
    try:
        o = client.options
        assert o.read_preference.mongos_mode == "secondary"
        assert o.server_selection_timeout == 6.0 and o.pool_options.connect_timeout == 6.0
    finally:
        client.close()
