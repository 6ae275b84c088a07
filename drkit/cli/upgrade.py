"""``drkit repository upgrade``: move a repository to the newest format version.

Registered by drkit/cli/main.py.  Imports from main.py are made inside the commands, so this
module can be imported while main.py is still being imported.

Moving a repository from format version 1 to 2 rewrites ``config`` only (nothing stored changes
meaning: version 2 adds manifest fields and part records, and reads every version-1 object).
An older drkit then refuses the repository (exit 3, naming version 2), so the upgrade is refused
while a lease of a long-running writer or job is live: that process may be an older drkit, and
it would keep writing until its next start.  Stop those jobs (or upgrade their drkit) first.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from drkit.errors import AlreadyExistsError, LockedError, RepositoryError

if TYPE_CHECKING:
    from drkit.cli.main import AppContext
    from drkit.repository import Repository

#: Lease kinds of processes that only read (a restore, a drill, a copy): they do not block.
_READER_KINDS = ("read",)


def live_writer_leases(repo: Repository) -> list[str]:
    """Descriptions of every live lease of a writer or job (``leases/<kind>/<name>``)."""
    from drkit.repository import leases

    now = repo.server_time()
    out = []
    for info in sorted(repo.storage.list(leases.PREFIX), key=lambda i: i.key):
        kind = info.key[len(leases.PREFIX):].split("/", 1)[0]
        if kind in _READER_KINDS:
            continue
        try:
            held = leases.load(repo, info.key)
        except Exception:  # noqa: BLE001 - a damaged lease is stale (leases.py): it blocks nothing
            continue
        if held is not None and not leases._stale(held, now):
            out.append(f"{info.key} held by {held.describe()}")
    return out


def upgrade_repository(repo: Repository, target: int | None = None) -> dict[str, Any]:
    """Rewrite ``config`` with format version ``target`` (default: the newest); returns what
    was done.  Refused (LockedError, exit 6) while a writer's lease is live; a repository already
    at the target is left alone."""
    from drkit.repository import format as fmt

    target = fmt.FORMAT_VERSION if target is None else target
    before = repo.format_version
    if target not in fmt.SUPPORTED_VERSIONS or target < before:
        raise RepositoryError(f"cannot move the repository at {repo.storage.url} from format version {before} "
                              f"to {target}: only upgrades to {fmt.FORMAT_VERSION} are possible")
    if before == target:
        return {"repository": repo.storage.url, "from": before, "to": target, "changed": False}
    live = live_writer_leases(repo)
    if live:
        raise LockedError(
            f"not upgrading the repository at {repo.storage.url} to format version {target}: "
            f"{'; '.join(live)} is live, and it may be a drkit that only knows version {before}. Stop it "
            "(or upgrade its drkit), then run 'drkit repository upgrade' again")
    config = dict(repo.config, version=target, upgraded={"from": before, "at": _now(repo)})
    body = json.dumps(config, sort_keys=True).encode()
    doc = {"config": config, "mac": repo.keys.mac_of(body)}
    raw = json.dumps(doc, sort_keys=True, indent=1).encode()
    try:
        repo.storage.put(fmt.CONFIG_KEY, raw, exclusive=False)
    except AlreadyExistsError:  # a backend that cannot overwrite
        raise RepositoryError(f"the storage at {repo.storage.url} refused to replace {fmt.CONFIG_KEY}") from None
    if repo.storage.get(fmt.CONFIG_KEY) != raw:
        raise RepositoryError(f"{fmt.CONFIG_KEY} did not read back as written after the upgrade; run "
                              "'drkit repository upgrade' again and check the storage")
    repo.config = config
    return {"repository": repo.storage.url, "from": before, "to": target, "changed": True}


def _now(repo: Repository) -> str:
    from drkit.repository.manifest import iso

    return iso(repo.server_time())


@click.group(name="repository")
def repository() -> None:
    """Repository-wide maintenance."""


@repository.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def upgrade(app: AppContext, as_json: bool) -> None:
    """Move the repository to the newest format version (every drkit that uses it must read it)."""
    from drkit import ops
    from drkit.cli.main import emit

    result = upgrade_repository(ops.open_repository(app.config))
    text = (f"repository {result['repository']} upgraded from format version {result['from']} to {result['to']}"
            if result["changed"] else f"repository {result['repository']} is already at format version {result['to']}")
    emit(result, as_json, text)
