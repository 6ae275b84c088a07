"""``drkit key ...``: the key envelopes that wrap the repository master key.

Registered by drkit/cli/main.py.  Imports from main.py are made inside the commands, so this
module can be imported while main.py is still being imported.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from drkit.errors import ConfigError

if TYPE_CHECKING:
    from drkit.cli.main import AppContext
    from drkit.config import EncryptionConfig


def _emit(data: Any, as_json: bool, text: str) -> None:
    from drkit.cli.main import emit

    emit(data, as_json, text)


def _new_key_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options naming the new wrapping key (``key add`` and ``key rotate``)."""
    for option in reversed((
        click.option("--new-key-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="File holding the new key."),
        click.option("--new-key-env", help="Environment variable holding the new key."),
        click.option("--new-kms-key-id", help="AWS KMS key (id or ARN) to wrap with."),
        click.option("--kms-endpoint-url", help="KMS endpoint (for KMS-compatible servers)."),
        click.option("--kms-region", help="KMS region."),
    )):
        func = option(func)
    return func


def _new_encryption(new_key_file: Path | None, new_key_env: str | None, new_kms_key_id: str | None,
                    kms_endpoint_url: str | None, kms_region: str | None) -> EncryptionConfig:
    from drkit.config import EncryptionConfig

    given = [v for v in (new_key_file, new_key_env, new_kms_key_id) if v]
    if len(given) != 1:
        raise ConfigError("give exactly one of --new-key-file, --new-key-env, --new-kms-key-id")
    return EncryptionConfig(key_file=new_key_file.absolute() if new_key_file else None, key_env=new_key_env,
                            kms_key_id=new_kms_key_id, kms_endpoint_url=kms_endpoint_url, kms_region=kms_region)


def _describe(k: dict[str, Any]) -> str:
    what = k.get("source") or k.get("kms_key_id") or ""
    line = f"{k['id']}  {k.get('kind') or '?':<6} {what}"
    if k.get("in_use"):
        line += "  (in use)"
    if k.get("damaged"):
        line += f"  DAMAGED: {k.get('problem')}"
    elif not k.get("self_check"):
        line += "  (no self-check: written by an older drkit)"
    return line.rstrip()


@click.group()
def key() -> None:
    """Manage the key envelopes that wrap the repository master key."""


@key.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def key_list(app: AppContext, as_json: bool) -> None:
    """List key envelopes (never their material), damaged ones marked DAMAGED."""
    from drkit import ops

    keys = ops.list_keys(app.config)
    _emit(keys, as_json, "\n".join(_describe(k) for k in keys))


@key.command("add")
@_new_key_options
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def key_add(app: AppContext, new_key_file: Path | None, new_key_env: str | None, new_kms_key_id: str | None,
            kms_endpoint_url: str | None, kms_region: str | None, as_json: bool) -> None:
    """Wrap the master key with one more key (e.g. an escrow key kept off-site).

    The repository then opens with the configured key and with the new one. The new envelope is
    read back and unwrapped before success is reported; nothing else changes.
    """
    from drkit import ops

    enc = _new_encryption(new_key_file, new_key_env, new_kms_key_id, kms_endpoint_url, kms_region)
    data = ops.add_key(app.config, enc)
    _emit(data, as_json, f"key {data['key_id']} added: the repository now opens with any of "
                         f"{len(data['keys'])} key envelopes\n" + "\n".join(_describe(k) for k in data["keys"]))


@key.command("remove")
@click.argument("key_id")
@click.option("--force", is_flag=True,
              help="Also remove the envelope the configured key opens (this configuration stops working).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def key_remove(app: AppContext, key_id: str, force: bool, as_json: bool) -> None:
    """Remove the key envelope KEY_ID (see 'drkit key list'); that key no longer opens the repository.

    Refused for the last intact envelope. Refused without --force for the envelope of the
    configured key: it is the only one known to open the repository, and every process configured
    with it would fail with exit 4 (use 'key rotate' to replace it).
    """
    from drkit import ops

    data = ops.remove_key(app.config, key_id, force=force)
    text = f"key {key_id} removed; left: {', '.join(data['key_ids'])}"
    if data["was_in_use"]:
        text += "; it was the configured key: point the configuration's encryption section at another key now"
    _emit(data, as_json, text)


@key.command("rotate")
@_new_key_options
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def key_rotate(app: AppContext, new_key_file: Path | None, new_key_env: str | None, new_kms_key_id: str | None,
               kms_endpoint_url: str | None, kms_region: str | None, as_json: bool) -> None:
    """Rewrap the master key with a new key and remove the envelope of the current one.

    'key add' of the new key, then 'key remove --force' of the configured one. No data is
    rewritten; every existing backup stays restorable with the new key. Update the encryption
    section of the configuration afterwards.
    """
    from drkit import ops

    enc = _new_encryption(new_key_file, new_key_env, new_kms_key_id, kms_endpoint_url, kms_region)
    data = ops.rotate_key(app.config, enc)
    _emit(data, as_json, f"master key rewrapped: key {data['old_key_id']} removed, key {data['new_key_id']} added; "
                         "now point the configuration's encryption section at the new key")
