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

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from drkit.config import read_password
from drkit.errors import ConfigError


@dataclass(frozen=True)
class RedisOptions:
    host: str
    port: int
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    data_dir: Path | None = None
    connect_timeout: float = 10.0
    sync_timeout: float = 3600.0  # how long the server may take to produce its snapshot
    slice_seconds: float = 60.0  # `redis follow`: seal a slice of the command stream this often

    @property
    def url(self) -> str:
        """The server's address for messages (never with a password)."""
        return f"redis://{self.host}:{self.port}"

    def password(self) -> str | None:
        return read_password(self.password_env, self.password_file)

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


def parse_options(source: str, raw: dict[str, Any]) -> RedisOptions:
    where = f"sources.{source}"
    url = raw.pop("url", None)
    if not url or not isinstance(url, str):
        raise ConfigError(f"{where}.url is required (redis://host:port)")
    host, port, user = parse_url(url, f"{where}.url")
    opts: dict[str, Any] = {
        "username": raw.pop("username", None) or user,
        "password_env": raw.pop("password_env", None),
        "password_file": Path(raw.pop("password_file")) if raw.get("password_file") else None,
        "data_dir": Path(raw.pop("data_dir")) if raw.get("data_dir") else None,
    }
    for name in ("connect_timeout", "sync_timeout", "slice_seconds"):
        if name in raw:
            value = raw.pop(name)
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{where}.{name} must be a positive number of seconds")
            opts[name] = float(value)
    raw.pop("password_file", None)
    raw.pop("data_dir", None)
    if raw:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(raw))}")
    return RedisOptions(host=host, port=port, **opts)
