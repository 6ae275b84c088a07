"""Settings of a ``type: redis`` source.

```yaml
sources:
  cache:
    type: redis
    url: redis://10.0.0.5:6379        # no password here: password_env / password_file
    password_env: REDIS_PASSWORD      # optional; username: ... for ACL users
    data_dir: /var/lib/redis          # optional: node-local mode (BGSAVE, AOF increments)
```
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import with_config

from drkit.config import FilePath, Seconds, Text, read_password, validate_section
from drkit.errors import ConfigError


@with_config({"extra": "forbid"})
@dataclass(frozen=True)
class RedisOptions:
    host: str
    port: int
    username: Text | None = None
    password_env: Text | None = None
    password_file: FilePath | None = None
    data_dir: FilePath | None = None
    connect_timeout: Seconds = 10.0
    sync_timeout: Seconds = 3600.0  # how long the server may take to produce its snapshot
    slice_seconds: Seconds = 60.0  # `redis follow`: seal a slice of the command stream this often
    # The source's name, for messages (not a setting of the file).
    source: InitVar[str | None] = None

    def __post_init__(self, source: str | None) -> None:
        object.__setattr__(self, "_source", source)

    @property
    def url(self) -> str:
        """The server's address for messages (never with a password)."""
        return f"redis://{self.host}:{self.port}"

    def password(self) -> str | None:
        """The password to AUTH with (None: none configured).  Raises ConfigError when
        ``password_env`` names a variable that is not set -- before any command is sent."""
        owner = getattr(self, "_source", None)
        return read_password(self.password_env, self.password_file, owner=f"sources.{owner}" if owner else None)

    def client(self, **kw: Any) -> Any:
        """A redis-py client for ordinary commands (INFO, TIME, BGSAVE ...)."""
        import redis

        return redis.Redis(host=self.host, port=self.port, username=self.username, password=self.password(),
                           socket_connect_timeout=self.connect_timeout,
                           socket_timeout=kw.pop("socket_timeout", 60), **kw)


def parse_url(url: str, what: str) -> tuple[str, int, str | None]:
    """``redis://[user@]host[:port]`` -> (host, port, user); a password in it is refused."""
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(f"{what} is not a valid redis:// URL") from None
    if parts.scheme != "redis" or not parts.hostname:
        raise ConfigError(f"{what} must look like redis://host:port (rediss:// TLS is not supported yet)")
    if parts.password:
        raise ConfigError(f"{what} must not contain a password: use password_env or password_file "
                          "(a password in the URL would appear in process arguments and messages)")
    if parts.path not in ("", "/", "/0"):
        raise ConfigError(f"{what}: a backup covers every database; drop the /db suffix")
    return parts.hostname, port, parts.username or None


SETTINGS = {"url", "username", "password_env", "password_file", "data_dir", "connect_timeout", "sync_timeout",
            "slice_seconds"}


def parse_options(source: str, raw: dict[str, Any]) -> RedisOptions:
    """Validate a redis source's settings; a problem raises ConfigError naming
    ``sources.<source>.<field>``, what it accepts and what was given."""
    where = f"sources.{source}"
    url = raw.get("url")
    if not url or not isinstance(url, str):
        raise ConfigError(f"{where}.url is required (redis://host:port)")
    host, port, user = parse_url(url, f"{where}.url")
    given = {k: v for k, v in raw.items() if k != "url"}
    if given.get("username") is None and user:
        given["username"] = user
    opts = validate_section(RedisOptions, given, ("sources", source), allowed=SETTINGS,
                            fixed={"host": host, "port": port, "source": source})
    assert opts is not None
    return opts
