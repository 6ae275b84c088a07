"""Leases: one holder at a time, stale ones taken over, a lost lease noticed at renewal."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_repository import storage, wrapper  # noqa: F401 - the fixture

from drkit.errors import IntegrityError, LockedError
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


def _flip(storage, key: str, pos: int) -> None:  # noqa: F811 - the fixture's name
    data = bytearray(storage.get(key))
    data[pos % len(data)] ^= 0x01
    storage.put(key, bytes(data), exclusive=False)


def _damage(storage, key: str, how: str) -> None:  # noqa: F811
    if how == "flip":
        _flip(storage, key, len(storage.get(key)) // 2)
    elif how == "truncate":
        storage.put(key, storage.get(key)[:20], exclusive=False)
    else:  # sealed and authentic, but not a lease
        repo = Repository.open(storage, wrapper())
        storage.put(key, repo._seal_json("lease", key, b'{"kind": 1}'), exclusive=False)


@pytest.mark.parametrize("how", ["flip", "truncate", "not-a-lease"])
def test_damaged_lease_is_stale_and_taken_over(storage, caplog, how):  # noqa: F811
    repo = Repository.init(storage, wrapper())
    old = leases.acquire(repo, "follow", "cache", 3600, "the follower")
    _damage(storage, old.key, how)
    with pytest.raises(IntegrityError, match="leases/follow/cache"):
        leases.load(repo, old.key)  # what verify sees
    with caplog.at_level("WARNING", logger="drkit.repository.leases"):
        assert leases.read(repo, "follow", "cache") is None
    assert "lease leases/follow/cache is damaged" in caplog.text and "treating it as stale" in caplog.text
    # A live holder's lease would refuse (see above); a damaged one is taken over and overwritten.
    new = leases.acquire(repo, "follow", "cache", 3600, "the follower")
    assert new.token != old.token
    assert leases.load(repo, new.key).token == new.token


def test_holder_rewrites_its_damaged_lease_on_renewal(storage, caplog):  # noqa: F811
    repo = Repository.init(storage, wrapper())
    lease = leases.acquire(repo, "follow", "cache", 3600, "the follower")
    _flip(storage, lease.key, 40)
    with caplog.at_level("WARNING", logger="drkit.repository.leases"):
        leases.renew(repo, lease)  # does not raise LeaseLost: the object names no other holder
    assert "lease leases/follow/cache is damaged" in caplog.text and "rewrites it" in caplog.text
    assert leases.load(repo, lease.key).token == lease.token
    # A readable lease of another holder is still a loss.
    other = leases.Lease(**{**lease.__dict__, "token": "someone-else"})
    leases._write(repo, other)
    with pytest.raises(leases.LeaseLost):
        leases.renew(repo, lease)


def test_release_deletes_a_damaged_lease(storage):  # noqa: F811
    repo = Repository.init(storage, wrapper())
    lease = leases.acquire(repo, "follow", "cache", 3600, "the follower")
    _flip(storage, lease.key, 40)
    leases.release(repo, lease)
    assert storage.stat(lease.key) is None


def test_lease_copied_to_another_name_is_damaged(storage):  # noqa: F811
    repo = Repository.init(storage, wrapper())
    lease = leases.acquire(repo, "follow", "cache", 3600, "the follower")
    storage.put("leases/follow/other", storage.get(lease.key))
    with pytest.raises(IntegrityError, match="leases/follow/other"):
        leases.load(repo, "leases/follow/other")
    assert leases.read(repo, "follow", "other") is None
    assert leases.acquire(repo, "follow", "other", 3600, "another").name == "other"
