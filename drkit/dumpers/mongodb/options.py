"""Settings of a ``type: mongodb`` source.

```yaml
sources:
  records:
    type: mongodb
    uri: mongodb://db1:27017,db2:27017/?replicaSet=healthcare_replica_set   # no password here
    username: backup
    password_env: MONGO_PASSWORD      # or password_file: /run/secrets/mongo
    auth_source: admin
    tls: true
    tls_ca_file: /etc/ssl/mongo-ca.pem
    read_preference: secondaryPreferred   # read the full backup from a secondary, as PBM does
    include: [records, billing.invoices]  # optional: DB or DB.COLL patterns (* wildcards)
    exclude: [records.tmp_*]
    parallel: 4                           # collections read at once
```

The URI must not hold a password: it would end up in process arguments, logs and messages.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import with_config

from drkit.config import FilePath, Flag, Seconds, Text, int_range, read_password, validate_section
from drkit.errors import ConfigError

ReadPreference = Literal["primary", "primaryPreferred", "secondary", "secondaryPreferred", "nearest"]
Parallel = int_range(1, 64, "an integer number of collections read at once")
SliceMiB = int_range(1, 1024, "an integer number of MiB")


@with_config({"extra": "forbid"})
@dataclass(frozen=True)
class MongoOptions:
    uri: Text
    username: Text | None = None
    password_env: Text | None = None
    password_file: FilePath | None = None
    auth_source: Text | None = None
    tls: Flag = False
    tls_ca_file: FilePath | None = None
    tls_certificate_key_file: FilePath | None = None
    read_preference: ReadPreference = "primary"
    include: list[Text] = field(default_factory=list)
    exclude: list[Text] = field(default_factory=list)
    parallel: Parallel = 2  # type: ignore[valid-type]
    connect_timeout: Seconds = 10.0
    slice_seconds: Seconds = 60.0  # `mongodb follow`: seal a slice this often
    slice_mib: SliceMiB = 64  # type: ignore[valid-type]  # ... or when it holds this much
    source: InitVar[str | None] = None

    def __post_init__(self, source: str | None) -> None:
        object.__setattr__(self, "_source", source)

    @property
    def url(self) -> str:
        """The server's address for messages (the URI as configured: it never holds a password)."""
        return self.uri

    def password(self) -> str | None:
        owner = getattr(self, "_source", None)
        return read_password(self.password_env, self.password_file, owner=f"sources.{owner}" if owner else None)

    def client(self, *, read_preference: str | None = None, **kw: Any) -> Any:
        """A pymongo client (connects lazily).  The password goes in as a keyword, never in the URI."""
        return make_client(self.uri, username=self.username, password=self.password(),
                           auth_source=self.auth_source, tls=self.tls, tls_ca_file=self.tls_ca_file,
                           tls_certificate_key_file=self.tls_certificate_key_file,
                           read_preference=read_preference or "primary", timeout=self.connect_timeout, **kw)


def make_client(uri: str, *, username: str | None = None, password: str | None = None, auth_source: str | None = None,
                tls: bool = False, tls_ca_file: Any = None, tls_certificate_key_file: Any = None,
                read_preference: str = "primary", timeout: float = 10.0, **kw: Any) -> Any:
    import pymongo

    args: dict[str, Any] = {"serverSelectionTimeoutMS": int(timeout * 1000), "connectTimeoutMS": int(timeout * 1000),
                            "readPreference": read_preference, "appname": "drkit", "tz_aware": True}
    if username:
        args["username"] = username
    if password is not None:
        args["password"] = password
    if auth_source:
        args["authSource"] = auth_source
    if tls:
        args["tls"] = True
        if tls_ca_file:
            args["tlsCAFile"] = str(tls_ca_file)
        if tls_certificate_key_file:
            args["tlsCertificateKeyFile"] = str(tls_certificate_key_file)
    args.update(kw)
    given = {k.lower() for k in _uri_options(uri)}
    for name in ("serverSelectionTimeoutMS", "connectTimeoutMS", "readPreference", "appname"):
        if name.lower() in given:  # the URI's own setting wins
            args.pop(name, None)
    return pymongo.MongoClient(uri, **args)


def _uri_options(uri: str) -> list[str]:
    from urllib.parse import parse_qsl

    return [k for k, _ in parse_qsl(urlsplit(uri).query)]


def check_uri(uri: str, what: str) -> None:
    """A ``mongodb://`` or ``mongodb+srv://`` URI without a password."""
    try:
        parts = urlsplit(uri)  # a replica set's URI lists several host:port: no single port to check
    except ValueError:
        raise ConfigError(f"{what} is not a valid mongodb:// URI") from None
    if parts.scheme not in ("mongodb", "mongodb+srv") or not parts.netloc:
        raise ConfigError(f"{what} must look like mongodb://host:port/?replicaSet=NAME")
    for host in parts.netloc.rpartition("@")[2].split(","):  # a replica set's URI lists several host:port
        name, _, port = host.rpartition(":") if ":" in host and not host.endswith("]") else (host, "", "")
        if not name or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            raise ConfigError(f"{what} is not a valid mongodb:// URI (bad host or port {host!r})")
    if parts.password is not None or ":" in (parts.netloc.rpartition("@")[0] or ""):
        raise ConfigError(f"{what} must not contain a password: use password_env or password_file "
                          "(a password in the URI would appear in process arguments and messages)")


SETTINGS = {"uri", "username", "password_env", "password_file", "auth_source", "tls", "tls_ca_file",
            "tls_certificate_key_file", "read_preference", "include", "exclude", "parallel", "connect_timeout",
            "slice_seconds", "slice_mib"}


def parse_options(source: str, raw: dict[str, Any]) -> MongoOptions:
    """Validate a mongodb source's settings; a problem raises ConfigError naming
    ``sources.<source>.<field>``, what it accepts and what was given."""
    where = f"sources.{source}"
    uri = raw.get("uri")
    if not uri or not isinstance(uri, str):
        raise ConfigError(f"{where}.uri is required (mongodb://host:port/?replicaSet=NAME)")
    check_uri(uri, f"{where}.uri")
    opts = validate_section(MongoOptions, raw, ("sources", source), allowed=SETTINGS, fixed={"source": source})
    assert opts is not None
    from .namespaces import Namespaces

    try:
        Namespaces(opts.include, opts.exclude)  # bad patterns are configuration errors now, not at backup
    except ConfigError as exc:
        raise ConfigError(f"{where}.include / {where}.exclude: {exc}") from None
    return opts
