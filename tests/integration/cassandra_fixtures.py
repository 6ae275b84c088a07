"""A Cassandra 5.0 ring for the integration tests: one 3-node cluster per session.

Import ``fixture_cassandra_cluster`` (``from cassandra_fixtures import fixture_cassandra_cluster``,
this directory is on sys.path like pgenv) into conftest.py to share the session fixture
``cassandra_cluster``: nodes on 127.0.0.1-127.0.0.3, keyspaces with RF 3 work at QUORUM.  A
cluster that cannot start FAILS the tests that need it; nothing here skips.  Tests that kill or
stop a node must start it again before they end (``cluster.start_node(i)``).

:func:`leftover_processes` and :func:`ports_left` check that a stopped cluster left nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from drkit.sandbox import port_is_free
from drkit.sandbox.cassandra import CassandraCluster, start_cassandra


def leftover_processes(workdir: Path) -> list[int]:
    """Pids whose command line names ``workdir`` (a node started there that still runs)."""
    needle = str(workdir).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if needle in fh.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def ports_left(cluster: CassandraCluster) -> list[tuple[str, int]]:
    """(host, port) of every node port that is still bound."""
    taken = []
    for n in cluster.nodes:
        for host, port in ((n.host, n.native_port), (n.host, n.storage_port), ("127.0.0.1", n.jmx_port)):
            if not port_is_free(port, host):
                taken.append((host, port))
    return taken


@pytest.fixture(scope="session", name="cassandra_cluster")
def fixture_cassandra_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CassandraCluster]:
    workdir = tmp_path_factory.mktemp("cassandra-ring")
    cluster = start_cassandra(workdir, 3)
    try:
        yield cluster
    finally:
        cluster.stop()
    assert leftover_processes(workdir) == []
    assert ports_left(cluster) == []
