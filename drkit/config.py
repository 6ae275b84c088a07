"""Typed configuration, validated once at load time and passed explicitly.

The file is YAML (``--config FILE`` or ``$DRKIT_CONFIG``).  Each datastore plugin owns the schema
of its own source section: the core keeps a source's options as a mapping and hands it to the
plugin's ``validate_options`` (which can use :func:`validate_section` for the same checks and
messages as the core's sections).

Why frozen stdlib dataclasses validated through pydantic ``TypeAdapter`` (and not pydantic
models): the rest of drkit and its tests build these objects in code (``S3Options(...)`` in the
sandbox, ``EncryptionConfig(...)`` in ``key rotate``, positional ``SourceConfig(name, type,
options)``), list their settings with ``dataclasses.fields`` (tests/unit/test_docs.py) and derive
copies with ``dataclasses.replace``; a dataclass keeps all of that unchanged.  What comes from the
file is validated by :func:`validate_section` against the same classes: every field's type and
range is declared once, in its annotation (``Strict()`` per field: ``"16"`` is not 16 and
``true`` is not 1 -- pydantic's config-wide strict mode would also refuse a mapping for a nested
section), unknown keys are refused listing the allowed ones, and every problem of the file is
reported at once, one line each: ``FILE: line N: repository.pack_size: expected ..., got 'big'``.
Sizes are plain integers (bytes); size strings such as ``16MiB`` are not accepted.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError, with_config
from pydantic.fields import FieldInfo

from drkit.errors import ConfigError
from drkit.retention.policy import RetentionPolicy

ENV_CONFIG = "DRKIT_CONFIG"


class Secret:
    """A value that never prints: repr/str show ``***``.  Call :meth:`reveal` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str | bytes) -> None:
        self._value = value

    def reveal(self) -> str | bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


MiB = 1024 * 1024
GiB = 1024 * MiB

# The types of settings.  Each carries its allowed values in its annotation; the description is
# what an error message says was expected (docs/user-guide.md section 2 lists the same ranges).


def _path_input(value: Any) -> Any:
    if isinstance(value, Path):
        return value
    if isinstance(value, str) and value.strip():
        return Path(value)
    raise ValueError("not a path")


def int_range(lo: int, hi: int, what: str = "an integer", note: str = "") -> Any:
    """An ``int`` setting in ``lo .. hi`` (a bool or a string is refused)."""
    return Annotated[int, Strict(), Field(ge=lo, le=hi, description=f"{what} ({lo} .. {hi}{note})")]


Text = Annotated[str, Strict(), Field(min_length=1, description="a non-empty string")]
Flag = Annotated[bool, Strict(), Field(description="true or false")]
Seconds = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False, description="a number of seconds > 0")]
GraceSeconds = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False, description="a number of seconds >= 0")]
FilePath = Annotated[Path, BeforeValidator(_path_input), Field(description="a path")]
PackSize = int_range(MiB, GiB, "an integer number of bytes")
PartSize = int_range(5 * MiB, 5 * GiB, "an integer number of bytes")
ZstdLevel = int_range(1, 22, "an integer zstd level")
Workers = int_range(0, 256, "an integer number of threads", "; 0 = one per core")
Concurrency = int_range(1, 64, "an integer number of parallel uploads")
AddressingStyle = Annotated[Literal["auto", "virtual", "path"], Field(description="one of auto, virtual, path")]
Sse = Annotated[Literal["AES256", "aws:kms"], Field(description="null, AES256 or aws:kms")]
Url = Annotated[str, Strict(), Field(min_length=1, description="a URL or path (file:///path, /path or s3://bucket/prefix)")]

_SECTION = ConfigDict(extra="forbid")  # strictness is per field (see the module docstring)


@with_config(_SECTION)
@dataclass(frozen=True)
class S3Options:
    endpoint_url: Text | None = None
    region: Text | None = "us-east-1"
    sse: Sse | None = None
    sse_kms_key_id: Text | None = None
    storage_class: Text | None = None
    multipart_threshold: PartSize = 16 * MiB
    part_size: PartSize = 8 * MiB
    max_concurrency: Concurrency = 4
    connect_timeout: Seconds = 10.0
    read_timeout: Seconds = 60.0
    addressing_style: AddressingStyle = "auto"
    verify_tls: Flag = True
    require_object_lock: Flag = False


@with_config(_SECTION)
@dataclass(frozen=True)
class RepositoryConfig:
    url: Url
    s3: S3Options = field(default_factory=S3Options)
    pack_size: PackSize = 16 * MiB
    compression_level: ZstdLevel = 3
    workers: Workers = 0  # 0 = one per core
    gap_grace: GraceSeconds = 600.0  # seconds a log hole counts as in flight before it is a gap (CONTRACTS.md)


@with_config(_SECTION)
@dataclass(frozen=True)
class EncryptionConfig:
    key_file: FilePath | None = None
    key_env: Text | None = None
    kms_key_id: Text | None = None
    kms_endpoint_url: Text | None = None
    kms_region: Text | None = None


@dataclass(frozen=True)
class SourceConfig:
    name: str
    type: str
    options: dict[str, Any]
    retention: RetentionPolicy | None = None  # ``sources.<name>.retention`` (docs/user-guide.md, Retention)


@dataclass(frozen=True)
class Config:
    repository: RepositoryConfig
    encryption: EncryptionConfig
    sources: dict[str, SourceConfig]
    path: Path | None = None

    def source(self, name: str) -> SourceConfig:
        try:
            return self.sources[name]
        except KeyError:
            known = ", ".join(sorted(self.sources)) or "none"
            where = f" in {self.path}" if self.path else ""
            raise ConfigError(f"no source named {name!r}{where} (configured: {known})") from None


def read_password(env_name: str | None, file: Path | None, *, owner: str | None = None) -> str | None:
    """A source's password: the environment variable ``env_name`` if set, else the file's first
    line (stripped), else None when neither is configured.  Shared by every dumper so they
    behave alike.

    A ``password_env`` that names a variable this process does not have (and no
    ``password_file`` to fall back on) is a configuration error, raised when the password is
    needed: connecting without the password the configuration asks for would only end in a
    refused login.  ``owner`` (e.g. ``sources.cache``) says whose setting it is."""
    if env_name and os.environ.get(env_name):
        return os.environ[env_name]
    if file:
        try:
            return file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read password_file {file}: {exc.strerror}") from None
    if env_name:
        whose = f"{owner}: " if owner else ""
        raise ConfigError(
            f"{whose}password_env {env_name} is not set in the environment of this process; "
            "export it or use password_file"
        )
    return None


# -- validation -----------------------------------------------------------------------------------

T = TypeVar("T")
Loc = tuple[str | int, ...]
Lines = Mapping[Loc, int]


def dotted(loc: Loc) -> str:
    """``("sources", "db", "databases", 0)`` -> ``sources.db.databases[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def show(value: Any) -> str:
    """A given value as the message shows it (YAML spelling, never more than ~60 characters)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def problem(file: str | None, loc: Loc, text: str, lines: Lines | None = None) -> str:
    """One line of a configuration error: ``FILE: line N: a.b.c: text`` (parts omitted when
    unknown).  The line is the key's own, or for a missing key the nearest enclosing one's."""
    line = None
    for n in range(len(loc), 0, -1):
        line = (lines or {}).get(loc[:n])
        if line is not None:
            break
    head = ": ".join(part for part in (file, f"line {line}" if line else None, dotted(loc) or None) if part)
    return f"{head}: {text}" if head else text


@functools.cache
def _adapter(cls: type) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, globalns=vars(sys.modules[cls.__module__]), include_extras=True)


def _unwrap(hint: Any) -> tuple[Any, str | None, bool]:
    """(the bare type, the first description on the way, whether null is allowed)."""
    desc, nullable = None, False
    while True:
        origin = get_origin(hint)
        if origin is Annotated:
            # Nested Annotated are flattened: the last description is the most specific one.
            found = [m.description for m in hint.__metadata__ if isinstance(m, FieldInfo) and m.description]
            if found and desc is None:
                desc = found[-1]
            hint = hint.__origin__
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(hint) if a is not type(None)]
            nullable = nullable or len(args) < len(get_args(hint))
            if len(args) != 1:
                return hint, desc, nullable
            hint = args[0]
        else:
            return hint, desc, nullable


def _walk(cls: type, loc: Loc) -> Any:
    """The annotation of the setting at ``loc`` inside ``cls`` (None when there is none)."""
    hint: Any = cls
    for part in loc:
        bare = _unwrap(hint)[0]
        if isinstance(part, int):
            args = [a for a in get_args(bare) if a is not Ellipsis]
            hint = args[0] if args else None
        elif dataclasses.is_dataclass(bare):
            hint = _hints(bare).get(part) if part in {f.name for f in dataclasses.fields(bare)} else None
        else:
            hint = None
        if hint is None:
            return None
    return hint


def expected(cls: type, loc: Loc) -> str | None:
    """What the setting at ``loc`` accepts, in words (from its annotation's description)."""
    hint = _walk(cls, loc)
    if hint is None:
        return None
    bare, desc, nullable = _unwrap(hint)
    if desc is None and dataclasses.is_dataclass(bare):
        desc = "a mapping of settings"
    if desc and nullable and "null" not in desc:
        desc += " or null"
    return desc


def _allowed(cls: type, loc: Loc) -> list[str]:
    bare = _unwrap(_walk(cls, loc) if loc else cls)[0]
    return sorted(f.name for f in dataclasses.fields(bare) if f.init) if dataclasses.is_dataclass(bare) else []


def validate_section(
    cls: type[T],
    raw: Any,
    prefix: Loc,
    *,
    file: str | None = None,
    lines: Lines | None = None,
    allowed: set[str] | None = None,
    fixed: Mapping[str, Any] | None = None,
    report: Callable[[str], None] | None = None,
) -> T | None:
    """Validate one section of the file (a mapping) into the dataclass ``cls``.

    Every problem becomes one line naming ``prefix`` + the field path, what was expected (from
    the field's annotation) and what was given.  With ``report`` each line is passed to it and
    None is returned on a problem (so a caller can collect the problems of every section);
    without it the lines are raised as one :class:`ConfigError`.  ``allowed`` replaces the
    settings the file may give (default: the init fields of ``cls``); ``fixed`` adds values the
    caller derived (they are not settings of the file, e.g. ``host`` from a URL).
    """
    found: list[str] = []
    result = None
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        found.append(problem(file, prefix, f"expected a mapping of settings, got {show(raw)}", lines))
    else:
        names = allowed if allowed is not None else set(_allowed(cls, ()))
        data: dict[str, Any] = {}
        for key, value in raw.items():
            if key in names:
                if value is None and dataclasses.is_dataclass(_unwrap(_walk(cls, (key,)))[0]):
                    continue  # an empty nested section (``s3:``): its defaults
                data[key] = value
            else:
                text = f"unknown setting (allowed: {', '.join(sorted(names))})"
                found.append(problem(file, (*prefix, key), text, lines))
        try:
            result = _adapter(cls).validate_python({**data, **(fixed or {})})
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
                found.append(problem(file, (*prefix, *loc), _explain(cls, loc, err), lines))
    found.sort(key=_line_order)
    if found and report is None:
        raise ConfigError("\n".join(found))
    for line in found:
        report(line)  # type: ignore[misc]
    return None if found else result


def _line_order(text: str) -> int:
    """Sort key of a :func:`problem` line: its line number (lines without one last)."""
    match = re.search(r": line (\d+): ", text)
    return int(match.group(1)) if match else sys.maxsize


def _explain(cls: type, loc: Loc, err: Any) -> str:
    kind = err["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"unknown setting (allowed: {', '.join(_allowed(cls, loc[:-1]))})"
    want = expected(cls, loc)
    if kind == "missing":
        return f"required: {want}" if want else "required"
    if want is None:
        want = err["msg"][0].lower() + err["msg"][1:]
        return f"{want}, got {show(err['input'])}"
    return f"expected {want}, got {show(err['input'])}"


# -- the file -------------------------------------------------------------------------------------

TOP_LEVEL = ("repository", "encryption", "sources", "schedules", "targets")


def parse_config(data: Any, path: Path | None = None, *, lines: Lines | None = None) -> Config:
    """Validate the loaded YAML ``data``; ``lines`` maps key paths to their lines (for messages).

    Every problem of the file is reported at once, one line each (exit code 2)."""
    where = str(path) if path else "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    problems: list[str] = []

    def bad(loc: Loc, text: str) -> None:
        problems.append(problem(where, loc, text, lines))

    common: dict[str, Any] = {"file": where, "lines": lines, "report": problems.append}
    repository = validate_section(RepositoryConfig, data.get("repository"), ("repository",), **common)
    if repository is not None:
        if repository.s3.sse_kms_key_id and repository.s3.sse != "aws:kms":
            bad(("repository", "s3", "sse_kms_key_id"), "applies only with sse: aws:kms")
        if repository.url.startswith("file://") or "://" not in repository.url:
            local = repository.url.removeprefix("file://")
            if not local.startswith("/") and path is not None:
                local = str((path.parent / local).resolve())
            repository = dataclasses.replace(repository, url="file://" + local)
    encryption = validate_section(EncryptionConfig, data.get("encryption"), ("encryption",), **common)
    if encryption is not None:
        if encryption.key_file and not encryption.key_file.is_absolute() and path is not None:
            encryption = dataclasses.replace(encryption, key_file=(path.parent / encryption.key_file).resolve())
        chosen = [k for k in ("key_file", "key_env", "kms_key_id") if getattr(encryption, k)]
        if len(chosen) != 1:
            bad(("encryption",), f"needs exactly one of key_file, key_env, kms_key_id (got {', '.join(chosen) or 'none'})")
    sources: dict[str, SourceConfig] = {}
    raw_sources = data.get("sources") or {}
    if not isinstance(raw_sources, dict):
        bad(("sources",), f"expected a mapping of source name -> settings, got {show(raw_sources)}")
        raw_sources = {}
    for name, body in raw_sources.items():
        sname = str(name)
        if "/" in sname or not sname.strip():
            bad(("sources", name), f"invalid source name {sname!r}: it must not be empty or contain /")
        elif not isinstance(body, dict):
            bad(("sources", name), f"expected a mapping of settings with a type, got {show(body)}")
        elif not isinstance(body.get("type"), str) or not body["type"].strip():
            given = f", got {show(body['type'])}" if "type" in body else ""
            bad(("sources", name, "type"), f"required: the datastore type (e.g. postgres, redis){given}")
        else:
            opts = {k: v for k, v in body.items() if k not in ("type", "retention")}
            retention = None
            if "retention" in body:
                retention = validate_section(RetentionPolicy, body["retention"], ("sources", name, "retention"),
                                             **common)
                if retention is not None and retention.is_empty():
                    bad(("sources", name, "retention"), "sets no rule: give at least one of keep_last, keep_daily, "
                        "..., keep_within, pitr_window, min_fulls (or remove the section)")
            sources[sname] = SourceConfig(sname, body["type"], opts, retention)
    for key in data:
        if key not in TOP_LEVEL:
            bad((key,), f"unknown top-level section (allowed: {', '.join(sorted(TOP_LEVEL))})")
    if problems:
        raise ConfigError("\n".join(sorted(problems, key=_line_order)))
    assert repository is not None and encryption is not None
    return Config(repository, encryption, sources, path)


def key_lines(node: yaml.Node | None) -> dict[Loc, int]:
    """For a composed YAML document: the (1-based) line of every mapping key and list item, by
    its path (``("repository", "pack_size") -> 4``)."""
    out: dict[Loc, int] = {}

    def walk(n: yaml.Node, loc: Loc) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                if isinstance(k, yaml.ScalarNode):
                    out[(*loc, k.value)] = k.start_mark.line + 1
                    walk(v, (*loc, k.value))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                out[(*loc, i)] = item.start_mark.line + 1
                walk(item, (*loc, i))

    if node is not None:
        walk(node, ())
    return out


def load_yaml(text: str) -> tuple[Any, dict[Loc, int]]:
    """Parse ``text`` (safe YAML) into (data, :func:`key_lines` of it)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return data, key_lines(node)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate the configuration from ``path`` or ``$DRKIT_CONFIG``."""
    chosen = path or os.environ.get(ENV_CONFIG)
    if not chosen:
        raise ConfigError(f"no configuration: pass --config FILE or set {ENV_CONFIG}")
    p = Path(chosen)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {p}: {exc.strerror}") from None
    try:
        data, lines = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: invalid YAML{at}") from None
    return parse_config(data, p.resolve(), lines=lines)
