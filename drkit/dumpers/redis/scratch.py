"""A scratch Redis server on a directory (empty, or a restored ``dump.rdb``), for restores and
drills (the contract's ``Dumper.scratch``): ``redis-server`` from PATH or ``$DRKIT_REDIS_SERVER``,
on 127.0.0.1 and a free port unless one is given, with the minimal ``redis.conf`` a restore writes
(no persistence: a copy to look at, not a new primary)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from drkit.dumpers.scratch import Instance
from drkit.errors import ConfigError
from drkit.proc import free_port

from .restore import write_conf


def redis_scratch(workdir: Path, restored: Path | None = None, port: int | None = None,
                  timeout: float = 600.0) -> Instance:
    import redis

    exe = shutil.which("redis-server") or os.environ.get("DRKIT_REDIS_SERVER")
    if not exe:
        raise ConfigError("redis-server not found on PATH (set DRKIT_REDIS_SERVER) for a scratch Redis")
    target = restored if restored is not None else workdir
    target.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = write_conf(target, port)
    proc = subprocess.Popen([exe, str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    def ready() -> bool:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=1)
        try:
            return bool(client.ping()) and not client.info("persistence").get("loading")
        except redis.RedisError:
            return False
        finally:
            client.close()

    inst = Instance("redis", f"redis://127.0.0.1:{port}", port, [proc.pid], target / "redis.log", ready, proc)
    inst.wait_ready(timeout)
    return inst
