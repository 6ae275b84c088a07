"""Command line options a dumper declares for its datastore (``drkit restore SOURCE --help``).

A dumper lists its restore options as :class:`OptionSpec` values in ``Dumper.restore_options``.
The core CLI resolves SOURCE's dumper from the configuration, turns the specs into options of
the ``restore`` command and hands the dumper the values as ``RestoreRequest.options``: a
read-only mapping from each spec's :attr:`OptionSpec.dest` to its value, checked by
:func:`resolve_options` (an undeclared key is a :class:`~drkit.errors.ConfigError`).

One name has one meaning across dumpers (:data:`STANDARD`): a dumper that restores into a
running server calls that option ``--to``, not a name of its own.  A datastore's historical
spelling stays as an alias (Redis's ``--flush`` for ``--drop``).  :func:`spec_problems` is the
contract check (run by the CLI before it uses a dumper's specs, and by
tests/unit/test_dumper_contract.py over every installed dumper).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from drkit.errors import ConfigError

KINDS: tuple[type, ...] = (str, int, float, Path, bool)
_FLAG = re.compile(r"^--[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class OptionSpec:
    """One option of a dumper's command.

    ``name`` is the long flag (``--to``); ``kind`` the value's type (``bool``: a flag without a
    value, False unless given); ``aliases`` further flags with the same meaning (``--flush``);
    ``dest`` the key in ``RestoreRequest.options`` (default: the name without the dashes, ``-``
    as ``_``); ``multiple``: the option may repeat and its value is a tuple (``--tablespace-map``).
    """

    name: str
    help: str
    kind: type = str
    aliases: tuple[str, ...] = ()
    dest: str = ""
    default: Any = None
    metavar: str | None = None
    multiple: bool = False

    def __post_init__(self) -> None:
        if not self.dest:
            object.__setattr__(self, "dest", self.name.removeprefix("--").replace("-", "_"))

    @property
    def is_flag(self) -> bool:
        return self.kind is bool

    @property
    def flags(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def empty(self) -> Any:
        """The value when the option is not given."""
        if self.multiple:
            return tuple(self.default or ())
        if self.is_flag:
            return bool(self.default)
        return self.default

    def check(self, value: Any) -> Any:
        """``value`` as this option holds it; ConfigError naming the option when it does not fit."""
        if value is None:
            return self.empty()
        if self.multiple:
            if isinstance(value, str | bytes) or not isinstance(value, Iterable):
                raise ConfigError(f"option {self.name} takes a list of {self.kind.__name__} values, "
                                  f"not {type(value).__name__}")
            return tuple(self._one(v) for v in value)
        return self._one(value)

    def _one(self, value: Any) -> Any:
        if self.kind is Path and isinstance(value, str):
            return Path(value)
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, self.kind) or (self.kind is int and isinstance(value, bool)):
            raise ConfigError(f"option {self.name} takes a {self.kind.__name__}, not {type(value).__name__}")
        return value


@dataclass(frozen=True)
class Standard:
    """The fixed meaning of an option name that every dumper offering it shares."""

    kind: type
    multiple: bool
    dest: str
    meaning: str


STANDARD: Mapping[str, Standard] = MappingProxyType({
    "--to": Standard(str, False, "to", "restore into this running server (a URL or DSN) instead of a directory"),
    "--to-password-env": Standard(str, False, "to_password_env",
                                  "the environment variable holding the --to server's password"),
    "--drop": Standard(bool, False, "drop", "replace what the target holds (refused without it if it holds data)"),
    "--database": Standard(str, False, "database", "only this database"),
    "--namespace": Standard(str, True, "namespace", "only this namespace, DB[.COLL]"),
    "--ns-from": Standard(str, False, "ns_from", "rename namespaces matching this pattern (with --ns-to)"),
    "--ns-to": Standard(str, False, "ns_to", "the new name of namespaces matching --ns-from"),
    "--tablespace-map": Standard(str, True, "tablespace_map", "put tablespace NAME in directory DIR (NAME=DIR)"),
})


def spec_problems(specs: Iterable[Any], *, reserved_flags: Iterable[str] = (),
                  reserved_dests: Iterable[str] = ()) -> list[str]:
    """What is wrong with a dumper's declared options (empty: nothing).  ``reserved_*``: the
    flags and destinations of the command's common options, which a dumper must not redeclare."""
    problems: list[str] = []
    flags_seen: set[str] = set(reserved_flags)
    dests_seen: set[str] = set(reserved_dests)
    for spec in specs:
        if not isinstance(spec, OptionSpec):
            problems.append(f"{spec!r} is not an OptionSpec")
            continue
        for flag in spec.flags:
            if not _FLAG.match(flag):
                problems.append(f"{flag!r} is not a long option name (--lower-case-words)")
            if flag in flags_seen:
                problems.append(f"{flag} is declared twice (or is one of the command's common options)")
            flags_seen.add(flag)
        if not spec.dest.isidentifier():
            problems.append(f"{spec.name}: dest {spec.dest!r} is not an identifier")
        if spec.dest in dests_seen:
            problems.append(f"{spec.name}: dest {spec.dest!r} is used twice (or by a common option)")
        dests_seen.add(spec.dest)
        if spec.kind not in KINDS:
            problems.append(f"{spec.name}: kind {spec.kind!r} is not one of {', '.join(k.__name__ for k in KINDS)}")
        if not spec.help.strip():
            problems.append(f"{spec.name} has no help text")
        if spec.is_flag and spec.multiple:
            problems.append(f"{spec.name}: a flag cannot be multiple")
        if spec.default is not None and spec.kind in KINDS:
            try:
                spec.check(spec.default)
            except ConfigError as exc:
                problems.append(f"{spec.name}: default {spec.default!r} does not fit: {exc}")
        for flag in spec.flags:
            std = STANDARD.get(flag)
            if std and (std.kind is not spec.kind or std.multiple != spec.multiple or std.dest != spec.dest):
                problems.append(f"{flag} has one meaning for every datastore: {std.meaning} "
                                f"({std.kind.__name__}{', repeatable' if std.multiple else ''}, dest {std.dest!r})")
    return problems


def resolve_options(specs: Iterable[OptionSpec], given: Mapping[str, Any] | None, *, what: str) -> Mapping[str, Any]:
    """Every declared dest with its value (given, or the option's empty value), read-only.
    A key no spec declares is refused (ConfigError, exit 2) naming the declared ones."""
    specs = tuple(specs)
    by_dest = {s.dest: s for s in specs}
    given = dict(given or {})
    unknown = sorted(set(given) - set(by_dest))
    if unknown:
        known = ", ".join(f"{s.name} ({s.dest})" for s in specs) or "none"
        raise ConfigError(f"{what} has no option {', '.join(map(repr, unknown))}; it declares: {known}")
    return MappingProxyType({k: s.check(given.get(k)) for k, s in by_dest.items()})
