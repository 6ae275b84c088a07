"""Throw-away S3 servers on loopback ports: moto (server mode) and versitygw (posix backend).

Each ``start_*`` function returns an :class:`S3Server` once the real HTTP endpoint answers
(polled, never a fixed sleep); :meth:`S3Server.stop` terminates it and waits, leaving no
process.  Credentials are generated per server and passed to it through the environment,
never on its command line.  ``$DRKIT_CACHE`` (default ``~/.cache/drkit``) holds built binaries.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drkit.sandbox import SandboxError
from drkit.sandbox.ports import free_port

VERSITYGW_VERSION = "v1.7.0"
VERSITYGW_MODULE = "github.com/versity/versitygw/cmd/versitygw"
START_TIMEOUT = 60.0


def cache_dir() -> Path:
    return Path(os.environ.get("DRKIT_CACHE") or Path.home() / ".cache" / "drkit")


@dataclass
class S3Server:
    kind: str
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    pid: int
    log_path: Path
    workdir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # never show the secret key
        return f"S3Server(kind={self.kind!r}, endpoint_url={self.endpoint_url!r}, pid={self.pid})"

    def session(self) -> Any:
        import boto3

        return boto3.Session(
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def options(self, **overrides: Any) -> Any:
        from drkit.config import S3Options

        return S3Options(
            **{
                "endpoint_url": self.endpoint_url,
                "region": self.region,
                "addressing_style": "path",
                **overrides,
            }
        )

    def client(self) -> Any:
        from botocore.config import Config

        return self.session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )

    def create_bucket(self, name: str, *, object_lock: bool = False) -> str:
        from drkit.storage.s3 import S3Storage

        S3Storage.create_bucket(self.client(), name, object_lock=object_lock)
        return name

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]).replace(self.secret_key, "***")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self.proc = None


def _wait_ready(server: S3Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if not server.alive():
            rc = server.proc.returncode if server.proc else None
            raise SandboxError(
                f"{server.kind} exited with code {rc} before answering on {server.endpoint_url}"
                f"; log {server.log_path}:\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(server.endpoint_url + "/", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer (403 for an unsigned request) means it is serving
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise SandboxError(
                f"{server.kind} did not answer on {server.endpoint_url} within {timeout:.0f}s"
                f"; log {server.log_path}:\n{server.log_tail()}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _launch(
    kind: str,
    workdir: Path,
    argv_for_port: Any,
    env: dict[str, str],
    access: str,
    secret: str,
    region: str,
    timeout: float,
    attempts: int = 3,
) -> S3Server:
    workdir.mkdir(parents=True, exist_ok=True)
    last: SandboxError | None = None
    for attempt in range(attempts):
        port = free_port()
        log_path = workdir / f"{kind}-{port}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
        try:
            proc = subprocess.Popen(
                argv_for_port(port),
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        server = S3Server(
            kind, f"http://127.0.0.1:{port}", access, secret, region, proc.pid, log_path, workdir, proc
        )
        try:
            _wait_ready(server, timeout)
            return server
        except SandboxError as exc:
            server.stop()
            last = exc
            if "address already in use" not in server.log_tail().lower() or attempt + 1 == attempts:
                raise
    raise last or SandboxError(f"{kind} did not start")


def start_moto(workdir: Path, timeout: float = START_TIMEOUT) -> S3Server:
    """Start ``python -m moto.server`` on a free loopback port (any credentials are accepted)."""
    access, secret = "drkit-" + secrets.token_hex(6), secrets.token_urlsafe(24)
    env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        env.pop(var, None)
    return _launch(
        "moto",
        Path(workdir),
        lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env,
        access,
        secret,
        "us-east-1",
        timeout,
    )


def versitygw_path() -> Path:
    return cache_dir() / "bin" / "versitygw"


def ensure_versitygw() -> Path:
    """Build versitygw with ``go install`` into ``$DRKIT_CACHE/bin`` unless it is there."""
    binary = versitygw_path()
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise SandboxError("cannot build versitygw: no `go` toolchain on PATH (install Go >= 1.24)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(binary.parent), "GOFLAGS": "-mod=mod"}
    res = subprocess.run(
        [go, "install", f"{VERSITYGW_MODULE}@{VERSITYGW_VERSION}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if res.returncode != 0 or not binary.is_file():
        tail = "\n".join((res.stderr or res.stdout).splitlines()[-30:])
        raise SandboxError(f"`go install {VERSITYGW_MODULE}@{VERSITYGW_VERSION}` failed:\n{tail}")
    return binary


def start_versitygw(workdir: Path, timeout: float = START_TIMEOUT) -> S3Server:
    """Start versitygw with the posix backend on ``workdir/data`` (versioning in ``versions``)."""
    binary = ensure_versitygw()
    workdir = Path(workdir)
    data, versions = workdir / "data", workdir / "versions"
    data.mkdir(parents=True, exist_ok=True)
    versions.mkdir(parents=True, exist_ok=True)
    access, secret = "drkit" + secrets.token_hex(6), secrets.token_hex(20)
    region = "us-east-1"
    env = {
        **os.environ,
        "ROOT_ACCESS_KEY": access,
        "ROOT_SECRET_KEY": secret,
        "VGW_REGION": region,
        "VGW_QUIET": "true",
    }
    posix = ["--versioning-dir", str(versions)]
    if not _has_user_xattrs(data):  # e.g. tmpfs, overlayfs without user xattrs
        (workdir / "meta").mkdir(exist_ok=True)
        posix += ["--sidecar", str(workdir / "meta")]
    posix.append(str(data))  # flags before the directory: the CLI stops at the first argument
    return _launch(
        "versitygw",
        workdir,
        lambda port: [str(binary), "--port", f"127.0.0.1:{port}", "posix", *posix],
        env,
        access,
        secret,
        region,
        timeout,
    )


def _has_user_xattrs(path: Path) -> bool:
    probe = path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.drkit", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


# --------------------------------------------------------------------------------------------
# ``drkit sandbox`` contract (see drkit.sandbox.kinds)


def _sandbox_state(server: S3Server, workdir: Path) -> dict[str, Any]:
    creds = workdir.parent / "s3-credentials"
    creds.write_text(f"AWS_ACCESS_KEY_ID={server.access_key}\nAWS_SECRET_ACCESS_KEY={server.secret_key}\n"
                     f"AWS_DEFAULT_REGION={server.region}\n")
    creds.chmod(0o600)
    server.proc = None  # leave it running
    return {"endpoint_url": server.endpoint_url, "pid": server.pid, "pids": [server.pid], "region": server.region,
            "credentials_file": str(creds), "log": str(server.log_path)}


def sandbox_up_moto(workdir: Path, nodes: int = 1) -> dict[str, Any]:
    return _sandbox_state(start_moto(workdir), workdir)


def sandbox_up_versitygw(workdir: Path, nodes: int = 1) -> dict[str, Any]:
    return _sandbox_state(start_versitygw(workdir), workdir)


def sandbox_down(state: dict[str, Any]) -> None:
    """Nothing beyond the CLI's sweep: S3 servers stop on SIGTERM."""
