"""Key envelopes: damage is told apart from a wrong key; ``key add`` / ``key remove`` / ``rotate``.

Pure tests run on the memory storage; the CLI tests run the installed ``drkit`` on a local
directory repository with key files (docs/repository-format.md, "Key envelopes").
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
from pathlib import Path

import pytest

from drkit.config import Secret
from drkit.errors import ConfigError, IntegrityError, WrongKey
from drkit.repository import Repository
from drkit.repository.keys import SecretWrapper, encode_envelope, envelope_check, parse_envelope
from drkit.storage.memory import MemoryStorage

DRKIT = "/opt/drkit/venv/bin/drkit"
GOOD, ESCROW, WRONG = "correct horse battery staple", "escrow key kept in the safe", "not the right key at all"


def wrapper(secret: str = GOOD) -> SecretWrapper:
    return SecretWrapper(Secret(secret), "test key", "key_env")


@pytest.fixture
def storage():
    name = os.urandom(4).hex()
    yield MemoryStorage(name)
    MemoryStorage.reset(name)


def envelope_keys(storage) -> list[str]:
    return sorted(i.key for i in storage.list("keys/"))


def rewrite(storage, key: str, env: dict) -> None:
    storage.put(key, json.dumps(env, sort_keys=True).encode(), exclusive=False)


def old_style(storage, key: str) -> dict:
    """Make ``key`` an envelope as drkit wrote it before self-checks (no ``check`` field)."""
    env = json.loads(storage.get(key))
    del env["check"]
    rewrite(storage, key, env)
    return env


def flip_wrapped(env: dict) -> dict:
    wrapped = bytearray(base64.b64decode(env["wrapped"]))
    wrapped[5] ^= 0x01
    return {**env, "wrapped": base64.b64encode(wrapped).decode()}


def damage(storage, key: str, how: str) -> None:
    raw = storage.get(key)
    env = json.loads(raw)
    if how == "flip-byte":  # anywhere in the file: with the self-check, every flip is detected
        data = bytearray(raw)
        data[len(data) // 2] ^= 0x01
        storage.put(key, bytes(data), exclusive=False)
    elif how == "flip-wrapped":  # still valid JSON and base64, only the wrapped key changed
        rewrite(storage, key, flip_wrapped(env))
    elif how == "delete-field":
        del env["nonce"]
        rewrite(storage, key, env)
    elif how == "truncate":
        storage.put(key, raw[: len(raw) - 9], exclusive=False)
    elif how == "empty":
        storage.put(key, b"", exclusive=False)
    # Damage to envelopes without a self-check (older drkit): found by their structure alone.
    elif how == "old-delete-field":
        env = old_style(storage, key)
        del env["wrapped"]
        rewrite(storage, key, env)
    elif how == "old-bad-base64":
        rewrite(storage, key, {**old_style(storage, key), "nonce": "not*base64!"})
    elif how == "old-wrong-length":
        env = old_style(storage, key)
        rewrite(storage, key, {**env, "wrapped": base64.b64encode(base64.b64decode(env["wrapped"])[:-1]).decode()})
    elif how == "old-ill-typed":
        env = old_style(storage, key)
        rewrite(storage, key, {**env, "kdf": {**env["kdf"], "n": "32768"}})
    elif how == "old-huge-scrypt":  # must be refused, not make opening allocate terabytes
        env = old_style(storage, key)
        rewrite(storage, key, {**env, "kdf": {**env["kdf"], "n": 2**40}})
    else:
        raise AssertionError(how)


DAMAGE = ["flip-byte", "flip-wrapped", "delete-field", "truncate", "empty", "old-delete-field", "old-bad-base64",
          "old-wrong-length", "old-ill-typed", "old-huge-scrypt"]


# -- the format ---------------------------------------------------------------------------------
def test_new_envelopes_carry_a_self_check_over_the_other_fields(storage):
    Repository.init(storage, wrapper())
    [key] = envelope_keys(storage)
    env = json.loads(storage.get(key))
    assert env["version"] == 1 and env["kind"] == "secret"
    assert len(env["check"]) == 64 and env["check"] == envelope_check(env)
    assert parse_envelope(storage.get(key)) == env
    # A re-encoded envelope gets a fresh check (a stale one passed in is not kept).
    again = json.loads(encode_envelope({**env, "source": "key_file"}))
    assert again["check"] != env["check"] and again["check"] == envelope_check(again)


def test_envelope_without_self_check_still_opens(storage):
    repo = Repository.init(storage, wrapper())
    [key] = envelope_keys(storage)
    old_style(storage, key)
    assert Repository.open(storage, wrapper())._master == repo._master
    [listed] = Repository.open(storage, wrapper()).list_keys()
    assert listed["self_check"] is False and listed["damaged"] is False


# -- damage vs wrong key ------------------------------------------------------------------------
@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_sole_envelope_is_an_integrity_error_naming_it(storage, how):
    Repository.init(storage, wrapper())
    [key] = envelope_keys(storage)
    damage(storage, key, how)
    with pytest.raises(IntegrityError) as exc:
        Repository.open(storage, wrapper())
    assert exc.value.key == key and f"{key} is damaged" in str(exc.value)
    assert exc.value.exit_code == 5


@pytest.mark.parametrize("damaged_first", [True, False])
@pytest.mark.parametrize("how", ["flip-byte", "flip-wrapped", "truncate"])
def test_second_good_envelope_opens_and_the_damaged_one_is_logged(storage, caplog, how, damaged_first):
    repo = Repository.init(storage, wrapper())
    escrow_id = repo.add_key(wrapper(ESCROW))
    keys = envelope_keys(storage)
    [escrow] = [k for k in keys if k.endswith(escrow_id)]
    [main] = [k for k in keys if k != escrow]
    bad, opener = (escrow, main) if (escrow == keys[0]) == damaged_first else (main, escrow)
    damage(storage, bad, how)
    with caplog.at_level(logging.WARNING, logger="drkit.repository.repo"):
        opened = Repository.open(storage, wrapper(GOOD if opener == main else ESCROW))
    assert opened._master == repo._master and f"keys/{opened.key_id}" == opener
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bad in warning and "damaged" in warning
    listed = {k["id"]: k for k in opened.list_keys()}
    assert listed[bad.split("/")[1]]["damaged"] and listed[bad.split("/")[1]]["problem"]
    assert not listed[opener.split("/")[1]]["damaged"]


def test_wrong_key_is_still_exit_4(storage):
    Repository.init(storage, wrapper())
    with pytest.raises(WrongKey) as exc:
        Repository.open(storage, wrapper(WRONG))
    assert exc.value.exit_code == 4 and "does not unlock" in str(exc.value)
    assert "predate" not in str(exc.value)  # a self-checked envelope: it is the key, not damage


def test_wrong_key_on_an_envelope_without_self_check_says_damage_is_possible(storage):
    Repository.init(storage, wrapper())
    [key] = envelope_keys(storage)
    rewrite(storage, key, flip_wrapped(old_style(storage, key)))
    with pytest.raises(WrongKey) as exc:  # AES-GCM cannot tell this from a wrong key
        Repository.open(storage, wrapper())
    assert key in str(exc.value) and "predate(s) envelope self-checks" in str(exc.value)


def test_wrong_key_with_a_damaged_envelope_of_the_same_kind_is_exit_5_saying_both(storage):
    repo = Repository.init(storage, wrapper())
    escrow_id = repo.add_key(wrapper(ESCROW))
    escrow = f"keys/{escrow_id}"
    [main] = [k for k in envelope_keys(storage) if k != escrow]
    damage(storage, escrow, "flip-wrapped")
    with pytest.raises(IntegrityError) as exc:  # the damaged one may be the configured key's
        Repository.open(storage, wrapper(WRONG))
    msg = str(exc.value)
    assert exc.value.key == escrow and f"{escrow} is damaged" in msg
    assert f"does not unlock the other 1 key envelope(s) ({main}" in msg
    assert Repository.open(storage, wrapper())._master == repo._master  # the intact one still works


def test_wrong_key_with_a_damaged_envelope_of_another_kind_is_exit_4_naming_it(storage):
    repo = Repository.init(storage, wrapper())
    kms = {"kind": "kms", "kms_key_id": "arn:aws:kms:eu-west-1:1:key/x", "kms_blob": base64.b64encode(b"b" * 40).decode(),
           "nonce": base64.b64encode(b"n" * 12).decode(), "wrapped": base64.b64encode(b"w" * 20).decode()}
    storage.put("keys/00000000000000aa", encode_envelope(kms))  # structurally damaged: 20 bytes wrapped
    with pytest.raises(WrongKey) as exc:  # a KMS envelope cannot be the configured secret's
        Repository.open(storage, wrapper(WRONG))
    assert "keys/00000000000000aa is damaged" in str(exc.value) and "not for this kind of key" in str(exc.value)
    assert Repository.open(storage, wrapper())._master == repo._master


# -- add / remove / rotate ----------------------------------------------------------------------
def test_add_key_makes_both_keys_open_the_same_repository(storage):
    repo = Repository.init(storage, wrapper())
    repo.put_log("db", "seg1", io.BytesIO(b"payload " * 1000))
    new_id = repo.add_key(wrapper(ESCROW))
    assert len(envelope_keys(storage)) == 2 and f"keys/{new_id}" in envelope_keys(storage)
    by_main, by_escrow = Repository.open(storage, wrapper()), Repository.open(storage, wrapper(ESCROW))
    assert by_main._master == by_escrow._master == repo._master
    assert by_escrow.key_id == new_id and by_main.key_id != new_id
    rec = by_escrow.get_log("db", "seg1")
    assert rec is not None and by_escrow.open_stream(rec.stream).read() == b"payload " * 1000
    assert [k["in_use"] for k in by_escrow.list_keys()].count(True) == 1


def test_add_key_whose_envelope_does_not_unwrap_is_undone(storage):
    class CannotUnwrap(SecretWrapper):  # e.g. a KMS key that may GenerateDataKey but not Decrypt
        def unwrap(self, envelope, repo_id, key_id):
            raise WrongKey("Decrypt refused: AccessDeniedException")

    repo = Repository.init(storage, wrapper())
    before = envelope_keys(storage)
    with pytest.raises(WrongKey, match="cannot unwrap it again.*the new envelope was removed"):
        repo.add_key(CannotUnwrap(Secret(ESCROW), "new key", "key_env"))
    assert envelope_keys(storage) == before


def test_remove_key(storage):
    repo = Repository.init(storage, wrapper())
    escrow_id = repo.add_key(wrapper(ESCROW))
    main_id = repo.key_id
    left = Repository.open(storage, wrapper(ESCROW)).remove_key(main_id)  # not in use there: no --force
    assert left == [escrow_id] and envelope_keys(storage) == [f"keys/{escrow_id}"]
    with pytest.raises(WrongKey):
        Repository.open(storage, wrapper())
    assert Repository.open(storage, wrapper(ESCROW))._master == repo._master


def test_remove_refusals_change_nothing(storage):
    repo = Repository.init(storage, wrapper())
    with pytest.raises(ConfigError, match="last intact key envelope"):
        repo.remove_key(repo.key_id, force=True)
    with pytest.raises(ConfigError, match="has no key envelope keys/feedfacefeedface"):
        repo.remove_key("feedfacefeedface")
    escrow_id = repo.add_key(wrapper(ESCROW))
    with pytest.raises(ConfigError, match="the configured key opened the repository with.*--force"):
        repo.remove_key(repo.key_id)
    damage(storage, f"keys/{escrow_id}", "truncate")
    with pytest.raises(ConfigError, match="last intact key envelope"):  # the other one is damaged
        repo.remove_key(repo.key_id, force=True)
    assert len(envelope_keys(storage)) == 2
    assert repo.remove_key(escrow_id) == [repo.key_id]  # a damaged envelope may go
    assert Repository.open(storage, wrapper())._master == repo._master


def test_remove_in_use_with_force(storage):
    repo = Repository.init(storage, wrapper())
    escrow_id = repo.add_key(wrapper(ESCROW))
    assert repo.remove_key(repo.key_id, force=True) == [escrow_id]
    with pytest.raises(WrongKey):
        Repository.open(storage, wrapper())
    assert Repository.open(storage, wrapper(ESCROW)).key_id == escrow_id


def test_rotate_is_add_then_remove_of_the_key_in_use(storage):
    repo = Repository.init(storage, wrapper())
    escrow_id = repo.add_key(wrapper(ESCROW))
    old = repo.key_id
    new_id = repo.rotate_key(wrapper("the 2027 key material"))
    assert repo.key_id == new_id and sorted(envelope_keys(storage)) == sorted([f"keys/{escrow_id}", f"keys/{new_id}"])
    assert f"keys/{old}" not in envelope_keys(storage)
    with pytest.raises(WrongKey):
        Repository.open(storage, wrapper())
    assert Repository.open(storage, wrapper("the 2027 key material"))._master == repo._master
    assert Repository.open(storage, wrapper(ESCROW))._master == repo._master  # the escrow key is kept


def test_list_keys_never_shows_key_material(storage):
    repo = Repository.init(storage, wrapper())
    escrow_id = repo.add_key(wrapper(ESCROW))
    damage(storage, f"keys/{escrow_id}", "flip-wrapped")
    listed = Repository.open(storage, wrapper()).list_keys()
    assert len(listed) == 2
    text = json.dumps(listed)
    for key in envelope_keys(storage):
        env = json.loads(storage.get(key))
        for secret in (env["wrapped"], env["nonce"], env["kdf"]["salt"], env["check"]):
            assert secret not in text
    [bad] = [k for k in listed if k["id"] == escrow_id]
    assert bad["damaged"] and "self-check mismatch" in bad["problem"] and bad["kind"] == "secret"


# -- the CLI ------------------------------------------------------------------------------------
class Cli:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.repo = tmp_path / "repo"
        for name, secret in (("a", GOOD), ("b", ESCROW), ("wrong", WRONG)):
            (tmp_path / f"{name}.key").write_text(secret + "\n")
            (tmp_path / f"{name}.yaml").write_text(
                f"repository:\n  url: {self.repo}\nencryption:\n  key_file: {tmp_path / f'{name}.key'}\n")

    def run(self, cfg: str, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "DRKIT_CONFIG"}
        return subprocess.run([DRKIT, "--config", str(self.tmp / f"{cfg}.yaml"), *args], capture_output=True,
                              text=True, timeout=120, env=env)

    def ok(self, cfg: str, *args: str) -> str:
        r = self.run(cfg, *args)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def keys(self, cfg: str) -> list[dict]:
        return json.loads(self.ok(cfg, "key", "list", "--json"))

    def envelope(self, key_id: str) -> Path:
        return self.repo / "keys" / key_id


@pytest.fixture
def cli(tmp_path) -> Cli:
    c = Cli(tmp_path)
    c.ok("a", "init")
    return c


def test_cli_damaged_envelope_exits_5_naming_it_and_a_wrong_key_exits_4(cli):
    [k] = cli.keys("a")
    r = cli.run("wrong", "key", "list")
    assert r.returncode == 4 and "does not unlock" in r.stderr
    path = cli.envelope(k["id"])
    path.write_bytes(path.read_bytes()[:-5])
    r = cli.run("a", "key", "list")
    assert r.returncode == 5, r.stderr
    assert f"keys/{k['id']} is damaged" in r.stderr and "Traceback" not in r.stderr


def test_cli_add_remove_and_a_damaged_second_envelope(cli):
    [a] = cli.keys("a")
    out = cli.ok("a", "key", "add", "--new-key-file", str(cli.tmp / "b.key"))
    assert "added" in out
    listed = cli.keys("b")
    assert len(listed) == 2
    [b] = [k for k in listed if k["in_use"]]
    assert b["id"] != a["id"] and all(not k["damaged"] and k["self_check"] for k in listed)

    # A flipped byte in b's envelope: a opens, with a warning naming it; list marks it.
    path = cli.envelope(b["id"])
    good = path.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    r = cli.run("a", "key", "list")
    assert r.returncode == 0 and f"keys/{b['id']} is damaged" in r.stderr
    assert f"{b['id']}  " in r.stdout and "DAMAGED" in r.stdout
    assert cli.run("b", "key", "list").returncode == 5
    path.write_bytes(good)

    r = cli.run("a", "key", "remove", a["id"])  # the envelope a opens with: refused without --force
    assert r.returncode == 2 and "--force" in r.stderr
    assert "removed" in cli.ok("b", "key", "remove", a["id"])
    assert cli.run("a", "key", "list").returncode == 4
    assert [k["id"] for k in cli.keys("b")] == [b["id"]]
    r = cli.run("b", "key", "remove", b["id"], "--force")  # the last one: refused even with --force
    assert r.returncode == 2 and "last intact key envelope" in r.stderr
    assert cli.envelope(b["id"]).exists()


def test_cli_rotate_still_works(cli):
    [a] = cli.keys("a")
    data = json.loads(cli.ok("a", "key", "rotate", "--new-key-file", str(cli.tmp / "b.key"), "--json"))
    assert data["old_key_id"] == a["id"]
    assert cli.run("a", "key", "list").returncode == 4
    assert [k["id"] for k in cli.keys("b")] == [data["new_key_id"]]
    r = cli.run("a", "key", "add", "--new-key-file", str(cli.tmp / "b.key"), "--new-key-env", "X")
    assert r.returncode == 2 and "exactly one of" in r.stderr
