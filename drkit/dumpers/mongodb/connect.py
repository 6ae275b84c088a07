"""Connections to a MongoDB source: errors named clearly, one member pinned for a backup."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from drkit.errors import ConfigError, SourceError

from .options import MongoOptions


@contextmanager
def query_errors(opts: MongoOptions | None, url: str | None = None) -> Iterator[None]:
    """Turn pymongo's failures into :class:`SourceError` naming the server (never a password)."""
    import pymongo.errors

    where = url or (opts.url if opts else "the server")
    try:
        yield
    except pymongo.errors.OperationFailure as exc:
        if exc.code in (18, 11) or "auth" in str(exc).lower() and exc.code in (None, 13):
            raise SourceError(f"MongoDB at {where} refused the credentials ({_short(exc)}); check username, "
                              "password_env/password_file and auth_source") from None
        if exc.code == 13:
            raise SourceError(f"MongoDB at {where}: not authorized ({_short(exc)}); the backup user needs the "
                              "backup role (and read on local.oplog.rs)") from None
        raise SourceError(f"MongoDB at {where} failed a command: {_short(exc)}") from None
    except pymongo.errors.ConfigurationError as exc:
        raise ConfigError(f"MongoDB connection settings for {where}: {exc}") from None
    except pymongo.errors.ServerSelectionTimeoutError:
        raise SourceError(f"cannot reach MongoDB at {where}: no suitable server answered within the connect "
                          "timeout (is it running, is the address right, does TLS match?)") from None
    except pymongo.errors.PyMongoError as exc:
        raise SourceError(f"MongoDB at {where}: {type(exc).__name__}: {_short(exc)}") from None


def _short(exc: Any) -> str:
    details = getattr(exc, "details", None) or {}
    msg = details.get("errmsg") if isinstance(details, dict) else None
    return str(msg or exc).split(", full error:")[0][:300]


@contextmanager
def source_client(opts: MongoOptions) -> Iterator[tuple[Any, str]]:
    """A client for one backup and the member it reads from (``host:port``).

    With a ``read_preference`` other than primary, the member that preference selects is asked
    who it is (``hello.me``) and a direct connection to it is used for everything.
    """
    client = opts.client()
    try:
        client.admin.command("ping")
        member = opts.uri
        if opts.read_preference != "primary":
            from pymongo.read_preferences import read_pref_mode_from_name

            mode = read_pref_mode_from_name(opts.read_preference)
            from pymongo.read_preferences import make_read_preference

            hello = client.admin.command("hello", read_preference=make_read_preference(mode, None))
            me = hello.get("me")
            if me:
                direct = _direct(opts, me)
                client.close()
                client = direct
                member = me
        yield client, member
    finally:
        client.close()


def _direct(opts: MongoOptions, host: str) -> Any:
    from .options import make_client

    return make_client(f"mongodb://{host}/", username=opts.username, password=opts.password(),
                       auth_source=opts.auth_source, tls=opts.tls, tls_ca_file=opts.tls_ca_file,
                       tls_certificate_key_file=opts.tls_certificate_key_file, timeout=opts.connect_timeout,
                       directConnection=True, readPreference="secondaryPreferred")
