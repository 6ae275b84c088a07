"""How the MongoDB dumper reports a server's refusals (pure: pymongo's exceptions, no server)."""

from __future__ import annotations

import pymongo.errors
import pytest

from drkit.dumpers.mongodb.connect import query_errors
from drkit.dumpers.mongodb.options import parse_options
from drkit.errors import ConfigError, SourceError

OPTS = parse_options("m", {"uri": "mongodb://db1:27017/?replicaSet=rs0", "username": "backup",
                           "password_env": "MONGO_PW"})


@pytest.mark.parametrize(("exc", "expect"), [
    (pymongo.errors.OperationFailure("Authentication failed.", code=18), "refused the credentials"),
    (pymongo.errors.OperationFailure("not authorized on local to execute command", code=13), "not authorized"),
    (pymongo.errors.ServerSelectionTimeoutError("db1:27017: [Errno 111] Connection refused"), "cannot reach"),
    (pymongo.errors.OperationFailure("some other failure", code=2), "failed a command"),
    (pymongo.errors.AutoReconnect("connection closed"), "AutoReconnect"),
])
def test_server_refusals_become_source_errors_naming_the_server(exc: Exception, expect: str) -> None:
    with pytest.raises(SourceError) as err, query_errors(OPTS):
        raise exc
    assert expect in str(err.value)
    assert "mongodb://db1:27017" in str(err.value)
    assert err.value.exit_code == 10


def test_bad_connection_settings_are_configuration_errors() -> None:
    with pytest.raises(ConfigError), query_errors(OPTS):
        raise pymongo.errors.ConfigurationError("Unknown option foo")


def test_unset_password_variable_is_refused_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MONGO_PW", raising=False)
    with pytest.raises(ConfigError, match="MONGO_PW"):
        OPTS.client()


def test_the_password_never_reaches_the_uri_or_the_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGO_PW", "s3cr3t-pw")
    client = OPTS.client()
    try:
        assert "s3cr3t-pw" not in repr(client) and "s3cr3t-pw" not in OPTS.url
        assert client.options.pool_options._credentials.password == "s3cr3t-pw"  # given as a keyword
    finally:
        client.close()
    with pytest.raises(SourceError) as err, query_errors(OPTS):
        raise pymongo.errors.OperationFailure("Authentication failed.", code=18)
    assert "s3cr3t-pw" not in str(err.value)
