"""S3 test servers and fault injection, shared by the storage tests and the core's tests.

Import ``fixture_moto_server`` / ``fixture_versitygw_server`` (``from s3_fixtures import ...``,
this directory is on sys.path like pgenv) into a test module (or the
lead's conftest.py, to share one server per session) to get the session fixtures
``moto_server`` / ``versitygw_server``; build storages with :func:`make_s3_storage`.
A server that cannot start FAILS the tests that need it; nothing here skips.

Fault injection (:class:`S3Faults`) hooks botocore's ``before-send`` event of one client:

    faults = S3Faults()
    storage = make_s3_storage(moto_server, client_hook=faults.install)
    faults.add("PutObject", faults.ambiguous)          # server applies it, client sees a 500
    faults.add("*", faults.error(503, "SlowDown"), rate=0.3, seed=1)

:class:`StallProxy` is a TCP proxy in front of a server whose first ``stall`` connections are
accepted and never answered.
"""

from __future__ import annotations

import random
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.httpsession import URLLib3Session
from urllib3.exceptions import ProtocolError

from drkit.sandbox.s3 import S3Server, start_moto, start_versitygw
from drkit.storage.s3 import S3Storage

MiB = 1024 * 1024


@pytest.fixture(scope="session", name="moto_server")
def fixture_moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_moto(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture(scope="session", name="versitygw_server")
def fixture_versitygw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_versitygw(tmp_path_factory.mktemp("versitygw"))
    yield server
    server.stop()


def make_s3_storage(
    server: S3Server,
    *,
    bucket: str | None = None,
    prefix: str = "repo",
    endpoint_url: str | None = None,
    client_hook: Callable[[Any], None] | None = None,
    **options: Any,
) -> S3Storage:
    """An :class:`S3Storage` on a fresh bucket of ``server`` (or on ``bucket`` if given)."""
    if bucket is None:
        bucket = server.create_bucket(f"drkit-{uuid.uuid4().hex[:16]}")
    opts = server.options(**({"endpoint_url": endpoint_url} if endpoint_url else {}), **options)
    return S3Storage(bucket, prefix, opts, session=server.session(), client_hook=client_hook)


# -- fault injection through botocore events ---------------------------------------------------


class _Raw:
    """A stand-in for urllib3's response: ``body`` then, optionally, a connection error."""

    def __init__(self, body: bytes, error_after: bool = False) -> None:
        self._body, self._pos, self._error = body, 0, error_after

    def read(self, amt: int | None = None, **_: Any) -> bytes:
        if self._pos >= len(self._body):
            if self._error:
                raise ProtocolError("Connection broken: injected truncation")
            return b""
        end = len(self._body) if amt is None else self._pos + amt
        chunk = self._body[self._pos : end]
        self._pos += len(chunk)
        return chunk

    def stream(self, amt: int = 65536, **_: Any) -> Iterator[bytes]:
        while chunk := self.read(amt):
            yield chunk

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        return None


def response(
    request: AWSPreparedRequest,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    error_after: bool = False,
) -> AWSResponse:
    hdrs = {"Content-Length": str(len(body)), **(headers or {})}
    return AWSResponse(request.url, status, hdrs, _Raw(body, error_after))


def error_body(code: str, message: str = "injected") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>{message}</Message><RequestId>inj</RequestId></Error>"
    ).encode()


Fault = Callable[[AWSPreparedRequest], "AWSResponse | None"]


@dataclass
class _Rule:
    op: str
    fault: Fault
    times: int | None
    rate: float
    rng: random.Random
    hits: int = 0


@dataclass
class S3Faults:
    """Per-client fault rules keyed by operation name (``"*"`` = any)."""

    rules: list[_Rule] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    _http: URLLib3Session = field(default_factory=URLLib3Session)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, client: Any) -> None:
        client.meta.events.register("before-send.s3.*", self._before_send)

    def add(
        self, op: str, fault: Fault, *, times: int | None = None, rate: float = 1.0, seed: int = 0
    ) -> None:
        self.rules.append(_Rule(op, fault, times, rate, random.Random(seed)))

    def clear(self) -> None:
        self.rules.clear()

    def _before_send(self, request: AWSPreparedRequest, **kwargs: Any) -> AWSResponse | None:
        op = kwargs.get("event_name", "").rsplit(".", 1)[-1]
        with self._lock:
            self.calls.append(op)
            chosen = None
            for rule in self.rules:
                if rule.op not in ("*", op) or (rule.times is not None and rule.hits >= rule.times):
                    continue
                if rule.rng.random() < rule.rate:
                    rule.hits += 1
                    chosen = rule
                    break
        return chosen.fault(request) if chosen else None

    # -- fault constructors (each returns a response, or None to let the request through) --

    def forward(self, request: AWSPreparedRequest) -> AWSResponse:
        """Send ``request`` to the real server; the response with its body read."""
        real = self._http.send(request)
        body = real.content
        return response(request, real.status_code, body, dict(real.headers.items()))

    @staticmethod
    def error(status: int, code: str) -> Fault:
        return lambda request: response(request, status, error_body(code))

    def ambiguous(self, request: AWSPreparedRequest) -> AWSResponse:
        """The server applies the request; the client is told 500 InternalError."""
        self.forward(request)
        return response(request, 500, error_body("InternalError"))

    def truncate(self, keep: float = 0.5, *, broken: bool = False, lie: bool = False) -> Fault:
        """Real response, body cut to ``keep``: with the original Content-Length (IncompleteRead),
        ending in a connection error (``broken``), or with a matching Content-Length (``lie``)."""

        def fault(request: AWSPreparedRequest) -> AWSResponse:
            real = self.forward(request)
            body = real.raw.read()
            cut = body[: int(len(body) * keep)]
            headers = dict(real.headers.items())
            if lie:
                headers["Content-Length"] = str(len(cut))
            resp = response(request, real.status_code, cut, headers, error_after=broken)
            return resp

        return fault

    def rewrite(self, fn: Callable[[AWSPreparedRequest, AWSResponse], AWSResponse | None]) -> Fault:
        return lambda request: fn(request, self.forward(request))


# -- a TCP proxy that stalls -------------------------------------------------------------------


class StallProxy:
    """Loopback TCP proxy to ``target``; the first ``stall`` connections are never answered."""

    def __init__(self, target: str, stall: int | None = 1) -> None:
        host, port = target.removeprefix("http://").rsplit(":", 1)
        self.target = (host, int(port))
        self.stall = stall  # None: every connection stalls
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.stall is None or self.connections <= self.stall:
                self._held.append(conn)  # accepted, read by nobody, never answered
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        for conn in self._held:
            conn.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
