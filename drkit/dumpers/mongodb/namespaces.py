"""Which MongoDB namespaces a backup or a replay handles, and where a restore puts them.

A namespace is ``"db.coll"``; the collection part may itself contain dots
(``db.system.buckets.weather``).  Patterns (``--namespace`` / include / exclude) are ``DB`` (every
collection of DB) or ``DB.COLL``; ``*`` is the only wildcard (as in mongorestore's ``--nsInclude``;
``?`` and ``[`` are literal).  In the database part ``*`` never matches a dot, in the collection
part it matches anything, dots included.  An empty include list means everything; exclude wins.

Always unwanted, whatever the patterns say:

- the databases ``local`` and ``config`` (replication and sharding state);
- ``admin.system.*`` (users, roles and versions are handled by the dumper separately);
- ``*.system.profile``, ``*.system.views`` (views are re-created from the catalog / from
  ``create`` commands) and every other ``system.*`` collection, except ``system.js`` (stored
  functions) and ``system.buckets.*`` (time-series data), which are wanted.

Renames follow mongorestore's ``--nsFrom`` / ``--nsTo``: each ``*`` of ``ns_from`` captures, and
the ``*`` of ``ns_to`` are substituted in order (``prod.*`` → ``staging.*``, ``a.users`` →
``b.people``).  A pattern without a dot means the whole database (``prod`` = ``prod.*``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from drkit.errors import ConfigError

RESERVED_DBS = frozenset({"local", "config"})
RENAME_REFUSED_DBS = frozenset({"local", "config", "admin"})


def split_ns(ns: str) -> tuple[str, str | None]:
    """``"db.coll.x"`` → ``("db", "coll.x")``; ``"db"`` → ``("db", None)``."""
    db, dot, coll = ns.partition(".")
    return db, (coll if dot else None)


def system_unwanted(db: str, coll: str | None) -> bool:
    """True for namespaces that are never backed up or replayed (see the module docstring)."""
    if db in RESERVED_DBS:
        return True
    if coll is None or not coll.startswith("system."):
        return False
    if db == "admin":
        return True
    return not (coll == "system.js" or coll.startswith("system.buckets."))


def _check_pattern(pattern: str, what: str) -> tuple[str, str | None]:
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{what}: empty namespace pattern; give DB or DB.COLLECTION (e.g. 'sales.orders')")
    if "$" in pattern or "\x00" in pattern:
        raise ConfigError(
            f"{what}: namespace pattern {pattern!r} contains '$' or a NUL byte, which MongoDB names "
            "cannot contain; give DB or DB.COLLECTION"
        )
    db, coll = split_ns(pattern)
    if not db:
        raise ConfigError(f"{what}: namespace pattern {pattern!r} has no database part; give DB or DB.COLLECTION")
    if coll is not None and not coll:
        raise ConfigError(
            f"{what}: namespace pattern {pattern!r} has an empty collection part; give {db!r} for the "
            f"whole database or {db + '.COLLECTION'!r}"
        )
    if "/" in db or "\\" in db or " " in db or '"' in db:
        raise ConfigError(f"{what}: database name in {pattern!r} contains a character MongoDB refuses (/\\ \" or space)")
    return db, coll


def _part_regex(part: str, *, db_part: bool, capture: bool) -> str:
    star = ("([^.]*)" if db_part else "(.*)") if capture else ("[^.]*" if db_part else ".*")
    return star.join(re.escape(piece) for piece in part.split("*"))


@dataclass(frozen=True)
class _Pattern:
    text: str
    db: re.Pattern[str]
    coll: re.Pattern[str] | None  # None: every collection of the database

    @classmethod
    def parse(cls, text: str, what: str) -> _Pattern:
        db, coll = _check_pattern(text, what)
        db_re = re.compile(_part_regex(db, db_part=True, capture=False))
        coll_re = None if coll is None else re.compile(_part_regex(coll, db_part=False, capture=False), re.S)
        return cls(text, db_re, coll_re)

    def matches(self, db: str, coll: str | None) -> bool:
        if not self.db.fullmatch(db):
            return False
        if self.coll is None:
            return True
        return coll is not None and bool(self.coll.fullmatch(coll))

    def covers_db(self) -> bool:
        """Does this pattern match every collection of the databases it matches?"""
        return self.coll is None or self.coll.pattern == ".*"


class _Rename:
    """``ns_from`` → ``ns_to`` with ``*`` captures substituted in order."""

    def __init__(self, ns_from: str, ns_to: str) -> None:
        f_db, f_coll = _check_pattern(ns_from, "--ns-from")
        t_db, t_coll = _check_pattern(ns_to, "--ns-to")
        if f_coll is None:
            f_coll = "*"
        if t_coll is None:
            t_coll = "*"
        n_from = f_db.count("*") + f_coll.count("*")
        n_to = t_db.count("*") + t_coll.count("*")
        if n_from != n_to:
            raise ConfigError(
                f"--ns-from {ns_from!r} has {n_from} '*' wildcard(s) but --ns-to {ns_to!r} has {n_to}; "
                "each '*' of --ns-from must have a matching '*' in --ns-to (e.g. 'prod.*' -> 'staging.*')"
            )
        if "*" not in t_db and t_db in RENAME_REFUSED_DBS:
            raise ConfigError(
                f"--ns-to {ns_to!r} renames into the {t_db!r} database, which drkit refuses (it holds the "
                "server's own state); choose another database"
            )
        self.f_db, self.f_coll, self.t_db, self.t_coll = f_db, f_coll, t_db, t_coll
        self.n_db_from = f_db.count("*")
        self.n_db_to = t_db.count("*")
        self.from_re = re.compile(
            _part_regex(f_db, db_part=True, capture=True) + r"\." + _part_regex(f_coll, db_part=False, capture=True),
            re.S,
        )
        self.to_re = re.compile(
            _part_regex(t_db, db_part=True, capture=True) + r"\." + _part_regex(t_coll, db_part=False, capture=True),
            re.S,
        )
        self.from_db_re = re.compile(_part_regex(f_db, db_part=True, capture=True))

    @staticmethod
    def _fill(template: str, values: Sequence[str]) -> str:
        pieces = template.split("*")
        out = [pieces[0]]
        for value, piece in zip(values, pieces[1:], strict=True):
            out.append(value)
            out.append(piece)
        return "".join(out)

    def _fill_ns(self, db_t: str, coll_t: str, groups: Sequence[str]) -> str:
        n = db_t.count("*")
        return self._fill(db_t, groups[:n]) + "." + self._fill(coll_t, groups[n:])

    def apply(self, ns: str) -> str | None:
        m = self.from_re.fullmatch(ns)
        if m is None:
            return None
        return self._fill_ns(self.t_db, self.t_coll, m.groups())

    def invert(self, ns: str) -> str | None:
        m = self.to_re.fullmatch(ns)
        if m is None:
            return None
        return self._fill_ns(self.f_db, self.f_coll, m.groups())

    def db_matches(self, db: str) -> bool:
        return self.from_db_re.fullmatch(db) is not None

    def whole_db(self, db: str) -> str | None:
        """The target database when every collection of ``db`` keeps its name in one database."""
        m = self.from_db_re.fullmatch(db)
        if m is None:
            return db
        if self.f_coll != "*" or self.t_coll != "*":
            return None
        groups = list(m.groups())
        if self.n_db_to > len(groups):  # the collection's capture would go into the db name
            return None
        return self._fill(self.t_db, groups)


class Namespaces:
    """Include/exclude filtering and ``--ns-from``/``--ns-to`` renaming of MongoDB namespaces."""

    def __init__(
        self,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        ns_from: str | None = None,
        ns_to: str | None = None,
    ) -> None:
        if isinstance(include, str) or isinstance(exclude, str):
            raise ConfigError("namespace include/exclude must be lists of patterns, not a single string")
        self._include = [_Pattern.parse(p, "namespace include") for p in include]
        self._exclude = [_Pattern.parse(p, "namespace exclude") for p in exclude]
        if (ns_from is None) != (ns_to is None):
            raise ConfigError("--ns-from and --ns-to go together: give both (e.g. --ns-from 'prod.*' --ns-to 'staging.*')")
        self._rename = _Rename(ns_from, ns_to) if ns_from is not None and ns_to is not None else None

    # -- filtering ---------------------------------------------------------------------------
    def wanted(self, ns: str) -> bool:
        """Is the namespace ``"db.coll"`` backed up / replayed?  ``"db"`` asks :meth:`wants_db`."""
        db, coll = split_ns(ns)
        if coll is None:
            return self.wants_db(db)
        if system_unwanted(db, coll):
            return False
        if self._include and not any(p.matches(db, coll) for p in self._include):
            return False
        return not any(p.matches(db, coll) for p in self._exclude)

    def wants_db(self, db: str) -> bool:
        """Could any collection of ``db`` be wanted?"""
        if db in RESERVED_DBS:
            return False
        if self._include and not any(p.db.fullmatch(db) for p in self._include):
            return False
        return not any(p.db.fullmatch(db) and p.covers_db() for p in self._exclude)

    def wants_whole_db(self, db: str) -> bool:
        """Is every (non-system) collection of ``db`` wanted?"""
        if not self.wants_db(db):
            return False
        if self._include and not any(p.db.fullmatch(db) and p.covers_db() for p in self._include):
            return False
        return not any(p.db.fullmatch(db) for p in self._exclude)

    # -- renaming ----------------------------------------------------------------------------
    @property
    def renames(self) -> bool:
        return self._rename is not None

    def target(self, ns: str) -> str:
        """The namespace ``ns`` is restored to (``ns`` itself without ``--ns-from``)."""
        if self._rename is None:
            return ns
        out = self._rename.apply(ns)
        if out is None:
            return ns
        db, coll = split_ns(out)
        if not db or not coll:
            raise ConfigError(f"--ns-from/--ns-to rename {ns!r} to {out!r}, which is not a valid DB.COLLECTION")
        if db in RENAME_REFUSED_DBS and out != ns:
            raise ConfigError(
                f"--ns-from/--ns-to rename {ns!r} into the {db!r} database, which drkit refuses; change --ns-to"
            )
        return out

    def whole_db_target(self, db: str) -> str | None:
        """The one database every collection of ``db`` lands in, or None when that is not so
        (a collection-level rename, or include/exclude patterns that keep only part of ``db``)."""
        if not self.wants_whole_db(db):
            return None
        if self._rename is None:
            return db
        out = self._rename.whole_db(db)
        if out is None or (out in RENAME_REFUSED_DBS and out != db):
            return None
        return out

    def target_db(self, db: str) -> str:
        """The renamed database, for database-level commands (``dropDatabase``); ConfigError when
        the rename does not map ``db`` as a whole (use :meth:`whole_db_target` to ask first)."""
        out = self.whole_db_target(db)
        if out is None:
            raise ConfigError(
                f"the namespace options do not map database {db!r} as a whole (a collection-level "
                "--ns-from/--ns-to or include/exclude patterns within it)"
            )
        return out

    def source(self, target_ns: str) -> str | None:
        """The source namespace restored to ``target_ns``, or None if no source maps there."""
        if self._rename is None:
            return target_ns
        src = self._rename.invert(target_ns)
        if src is not None and self._rename.apply(src) == target_ns:
            return src
        # not produced by the rename: only an untouched (non-matching) source maps to itself
        return target_ns if self._rename.apply(target_ns) is None else None
