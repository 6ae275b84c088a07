"""Leases: one holder at a time, stale ones taken over, a lost lease noticed at renewal."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_repository import storage, wrapper  # noqa: F401 - the fixture

from drkit.errors import LockedError
from drkit.repository import Repository, leases


def test_second_holder_refused_until_released(storage):  # noqa: F811
    repo = Repository.init(storage, wrapper())
    lease = leases.acquire(repo, "follow", "cache", 60, "the follower")
    with pytest.raises(LockedError, match=rf"the follower is already running: .* pid {os.getpid()}"):
        # Same host, same pid: a live holder (a dead pid on this host would be stale).
        leases.acquire(repo, "follow", "cache", 60, "the follower")
    leases.acquire(repo, "follow", "other", 60, "another")  # other names are independent
    leases.renew(repo, lease)
    leases.release(repo, lease)
    assert leases.read(repo, "follow", "cache") is None
    assert leases.acquire(repo, "follow", "cache", 60, "the follower").token != lease.token


def test_stale_lease_taken_over_and_the_old_holder_finds_out(storage):  # noqa: F811
    repo = Repository.init(storage, wrapper())
    old = leases.acquire(repo, "follow", "cache", 0.0, "the follower")  # ttl 0: stale at once
    new = leases.acquire(repo, "follow", "cache", 60, "the follower")
    with pytest.raises(leases.LeaseLost, match="taken over"):
        leases.renew(repo, old)
    leases.release(repo, old)  # releasing a lost lease leaves the new holder's alone
    assert leases.read(repo, "follow", "cache").token == new.token


def test_lease_of_a_dead_process_on_this_host_is_stale(storage):  # noqa: F811
    repo = Repository.init(storage, wrapper())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    lease = leases.acquire(repo, "follow", "cache", 3600, "the follower")
    lease.pid = int(dead.stdout)
    leases._write(repo, lease)
    assert leases.acquire(repo, "follow", "cache", 3600, "the follower").pid == os.getpid()
