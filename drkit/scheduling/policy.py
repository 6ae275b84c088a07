"""Schedule policies: ``schedules/*.yaml``, one file per source or group of sources.

```yaml
# schedules/platform.yaml
sources: [main-pg, cache, records]
timezone: UTC                      # the cron expressions' time zone (IANA name; DST handled)
full: "0 0 * * *"                  # cron: a full backup daily at 00:00
incremental: "0 */6 * * *"         # cron: an incremental every 6 h (optional)
continuous: false                  # true: log shipping runs all the time (WAL archiving, a follower)
retention:                         # the retention model of CONTRACTS.md (sources.<name>.retention)
  keep_within: 30d
  keep_within_incremental: 7d
  pitr_window: 7d
  min_fulls: 2
targets:
  rpo: 15m
  rto: 4h
drills:                            # per source: the user checks ``drkit drill`` runs (docs/drills.md)
  main-pg:
    checks:
      - {name: schema, query: "SELECT max(version) FROM schema_migrations", expect: "42"}
      - {name: health, url: "http://127.0.0.1:8080/health", expect_status: 200}
    app: {command: [/srv/app/bin/serve, --port, "8080"], env: {APP_MODE: drill}, ready_timeout: 60s}
```

Validated with the configuration's schema machinery (pydantic): every problem names the file,
its line and the field.  Cron arithmetic is croniter's (no hand-written parser).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, Strict, with_config

from drkit.config import Config, Flag, Text, load_yaml, problem, validate_section
from drkit.errors import ConfigError
from drkit.retention.policy import RetentionPolicy


def _cron(text: str) -> str:
    from croniter import croniter

    if not croniter.is_valid(text):
        raise ValueError(f"not a cron expression (5 fields: minute hour day-of-month month day-of-week): {text!r}")
    return text


def _zone(text: str) -> str:
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"not an IANA time zone name (e.g. UTC, Europe/Berlin): {text!r}") from None
    return text


_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$")
_UNIT = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def _span(value: object) -> float:  # also drill's --rpo-target / --rto-target
    """An RPO/RTO or flush time: ``70s``, ``15m`` / ``15min`` (minutes), ``4h``, ``1d`` or seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a time such as 70s, 15m, 4h or 1d")
    if isinstance(value, int | float):
        return float(value)
    m = _SPAN.match(str(value))
    if not m:
        raise ValueError(f"expected a time such as 70s, 15m (minutes), 4h or 1d, got {value!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


Span = Annotated[float, BeforeValidator(_span), Field(gt=0, description="a time such as 70s, 15m, 4h or 1d")]
Cron = Annotated[str, AfterValidator(_cron)]
Zone = Annotated[str, AfterValidator(_zone)]


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class Targets:
    rpo: Span | None = None  # seconds
    rto: Span | None = None


def _query(value: object) -> object:
    ok = (isinstance(value, str) and value.strip()) or (
        isinstance(value, list) and value and all(isinstance(v, str | int | float) and not isinstance(v, bool)
                                                  for v in value)) or (isinstance(value, dict) and value)
    if not ok:
        raise ValueError("not a query")
    return [str(v) for v in value] if isinstance(value, list) else value


def _text(value: object) -> object:
    """``expect: 42`` in YAML is a number: the first row is compared as text."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


Query = Annotated[object, AfterValidator(_query), Field(description=(
    "a query: a string (SQL, or a Redis command such as 'GET config:version'), a list of strings (a Redis "
    "command's words) or a mapping (a MongoDB query: {db, collection, filter} or {db, command})"))]
Expect = Annotated[str, BeforeValidator(_text), Strict(), Field(description="the first row, as text")]
Rows = Annotated[int, Strict(), Field(ge=0, description="a number of rows (0 or more)")]
Status = Annotated[int, Strict(), Field(ge=100, le=599, description="an HTTP status code (100-599)")]
Url = Annotated[str, Strict(), Field(pattern=r"^https?://[^\s/]+", description="an http:// or https:// URL")]
Command = Annotated[list[Text], Field(min_length=1, description="the command and its arguments: a non-empty "
                                      "list of strings")]


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class Check:
    """A user check of a drill: a data check (``query`` with ``expect`` or ``expect_rows``) or an
    HTTP check (``url`` with ``expect_status``) against the policy's ``app``."""

    name: Text
    query: Query | None = None
    database: Text | None = None  # where the query runs (the datastore's default when not given)
    expect: Expect | None = None
    expect_rows: Rows | None = None
    url: Url | None = None
    expect_status: Status | None = None  # default 200
    deadline: Span | None = None  # HTTP: retried until then (default: the app's ready_timeout)

    @property
    def http(self) -> bool:
        return self.url is not None


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class App:
    """The operator's application, started against the restored instance for the HTTP checks."""

    command: Command
    env: dict[Text, Annotated[str, BeforeValidator(_text), Strict()]] = field(default_factory=dict)
    ready_timeout: Span = 60.0  # the HTTP checks' deadline (each) unless a check sets its own


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class DrillSpec:
    checks: list[Check] = field(default_factory=list)
    app: App | None = None


Loc = tuple[str | int, ...]


def check_problems(c: Check) -> list[tuple[Loc, str]]:
    """What pydantic's field types cannot say: which fields go together (loc relative to the check)."""
    out: list[tuple[Loc, str]] = []
    if (c.query is None) == (c.url is None):
        out.append(((), "a check has either 'query' (a data check) or 'url' (an HTTP check)"))
    elif c.query is not None:
        if (c.expect is None) == (c.expect_rows is None):
            out.append(((), "a data check has exactly one of 'expect' (the first row as text) or 'expect_rows' "
                        "(the number of rows)"))
        out += [((k,), f"'{k}' belongs to an HTTP check (one with 'url')")
                for k in ("expect_status", "deadline") if getattr(c, k) is not None]
    else:
        out += [((k,), f"'{k}' belongs to a data check (one with 'query')")
                for k in ("expect", "expect_rows", "database") if getattr(c, k) is not None]
    return out


def drill_problems(spec: DrillSpec) -> list[tuple[Loc, str]]:
    """Every cross-field problem of a parsed spec (loc relative to the spec)."""
    out: list[tuple[Loc, str]] = []
    for i, c in enumerate(spec.checks):
        out += [(("checks", i, *sub), text) for sub, text in check_problems(c)]
    out += _names_and_app([c.name for c in spec.checks], any(c.http for c in spec.checks), spec.app is not None)
    return out


def _names_and_app(names: list[str | None], http: bool, app: bool) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name is None:
            continue
        if name in seen or name == "serving":
            why = "already used by another check" if name in seen else "the built-in check's"
            out.append((("checks", i, "name"), f"the check name {name!r} is {why}; give each check its own name"))
        seen.add(name)
    if http and not app:
        out.append((("app",), "required by the HTTP checks: {command: [...], env: {...}, ready_timeout: 60s}, the "
                    "application drkit starts against the restored instance"))
    if app and not http:
        out.append((("app",), "no HTTP check (one with 'url') uses the app; remove it or add a check"))
    return out


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class Policy:
    sources: list[Text]
    full: Cron
    timezone: Zone = "UTC"
    incremental: Cron | None = None
    continuous: Flag = False
    # The longest a commit waits to be shipped, for lint when the server cannot be asked (e.g.
    # PostgreSQL's archive_timeout plus the push); the live value wins when it answers.
    log_flush: Span | None = None
    retention: RetentionPolicy | None = None
    targets: Targets = field(default_factory=Targets)
    drills: dict[str, DrillSpec] = field(default_factory=dict)  # per source, validated by load_policies
    name: str = ""  # the file's name without .yaml (not a setting)
    path: Path | None = None  # not a setting

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def jobs(self) -> dict[str, str]:
        """Backup type -> cron expression."""
        out = {"full": self.full}
        if self.incremental:
            out["incremental"] = self.incremental
        return out

    def fires(self, cron: str, start: datetime, end: datetime) -> list[datetime]:
        """The fire times of ``cron`` in (start, end], in this policy's time zone (as UTC-aware)."""
        from croniter import croniter

        it = croniter(cron, start.astimezone(self.zone))
        out = []
        while True:
            t = it.get_next(datetime)
            t = t.astimezone(UTC)  # aware datetimes of one zone subtract as wall clocks: compare in UTC
            if t > end:
                return out
            out.append(t)

    def previous_fire(self, cron: str, now: datetime) -> datetime:
        from croniter import croniter

        return croniter(cron, now.astimezone(self.zone)).get_prev(datetime).astimezone(UTC)


SETTINGS = {"sources", "full", "timezone", "incremental", "continuous", "log_flush", "retention", "targets",
            "drills"}


def schedules_dir(config: Config, given: Path | None = None) -> Path:
    """``--schedules DIR``, else ``schedules/`` next to the configuration file."""
    if given is not None:
        return given
    if config.path is None:
        raise ConfigError("no schedules directory: pass --schedules DIR")
    return config.path.parent / "schedules"


def load_policies(directory: Path, config: Config) -> list[Policy]:
    """Every ``*.yaml`` policy in ``directory``; all problems at once (ConfigError, exit 2):
    a bad field (file, line, field), an unknown source, a source in two policies, a source whose
    retention is set both here and in the configuration."""
    if not directory.is_dir():
        raise ConfigError(f"no schedules directory {directory} (create it with one policy file per source or "
                          "group, see docs/scheduling.md)")
    problems: list[str] = []
    policies: list[Policy] = []
    owner: dict[str, str] = {}
    for path in sorted(directory.glob("*.yaml")):
        where = str(path)
        try:
            data, lines = load_yaml(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problems.append(f"{where}: invalid YAML" + (f" at line {mark.line + 1}" if mark else ""))
            continue
        if isinstance(data, dict) and "retention" in data and data["retention"] is None:
            data = {k: v for k, v in data.items() if k != "retention"}
        drills = None
        if isinstance(data, dict) and "drills" in data:
            data = dict(data)
            drills = _drills(data.pop("drills"), data.get("sources"), config, where, lines, problems)
        got = validate_section(Policy, data, (), file=where, lines=lines, allowed=SETTINGS,
                               fixed={"name": path.stem, "path": path, **({"drills": drills} if drills else {})},
                               report=problems.append)
        if got is None:
            continue
        for i, name in enumerate(got.sources):
            if name not in config.sources:
                known = ", ".join(sorted(config.sources)) or "none"
                problems.append(problem(where, ("sources", i), f"no source {name!r} in the configuration "
                                        f"(configured: {known})", lines))
            elif name in owner:
                problems.append(problem(where, ("sources", i), f"source {name!r} is already scheduled by "
                                        f"{owner[name]}; one policy per source", lines))
            else:
                owner[name] = where
                if got.retention is not None and config.sources[name].retention is not None:
                    problems.append(problem(where, ("retention",), f"source {name!r} also has "
                                            f"sources.{name}.retention in the configuration; keep one", lines))
        policies.append(got)
    if problems:
        raise ConfigError("\n".join(problems))
    if not policies:
        raise ConfigError(f"{directory} holds no policy (*.yaml)")
    return policies


def _drills(raw: object, sources: object, config: Config, where: str, lines: dict,
            problems: list[str]) -> dict[str, DrillSpec] | None:
    """The ``drills:`` section: source -> DrillSpec, each check's fields and its query's form (the
    source's dumper judges the form, ``Dumper.query_problem``).  Problems go to ``problems``."""
    from drkit.dumpers import dumper_class

    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.append(problem(where, ("drills",), "expected a mapping of source name to {checks: [...], app: "
                                "{...}}", lines))
        return None
    listed = [s for s in sources if isinstance(s, str)] if isinstance(sources, list) else []
    out: dict[str, DrillSpec] = {}
    for name, body in raw.items():
        loc = ("drills", name)
        if name not in listed:
            problems.append(problem(where, loc, f"{name!r} is not one of this policy's sources "
                                    f"({', '.join(map(str, listed)) or 'none'})", lines))
            continue
        if not isinstance(body, dict):
            problems.append(problem(where, loc, "expected a mapping: {checks: [...], app: {...}}", lines))
            continue
        found = [problem(where, (*loc, k), "unknown setting (allowed: app, checks)", lines)
                 for k in body if k not in ("checks", "app")]
        raw_checks = body.get("checks") or []
        if not isinstance(raw_checks, list):
            found.append(problem(where, (*loc, "checks"), "expected a list of checks", lines))
            raw_checks = []
        cls = None
        if name in config.sources:
            try:
                cls = dumper_class(config, name)
            except ConfigError:
                pass  # the source's own problem is reported by the configuration
        checks: list[Check] = []
        names: list[str | None] = []
        http = False
        for i, item in enumerate(raw_checks):
            at = (*loc, "checks", i)
            c = validate_section(Check, item, at, file=where, lines=lines, report=found.append)
            names.append(c.name if c else (item.get("name") if isinstance(item, dict) else None))
            http = http or (c.http if c else isinstance(item, dict) and "url" in item)
            if c is None:
                continue
            found += [problem(where, (*at, *sub), text, lines) for sub, text in check_problems(c)]
            if cls is not None and c.query is not None and (why := cls.query_problem(c.query)):
                found.append(problem(where, (*at, "query"), why, lines))
            checks.append(c)
        app = None
        if body.get("app") is not None:
            app = validate_section(App, body["app"], (*loc, "app"), file=where, lines=lines, report=found.append)
        found += [problem(where, (*loc, *sub), text, lines)
                  for sub, text in _names_and_app(names, http, "app" in body and body["app"] is not None)]
        problems.extend(found)
        if not found:
            out[name] = DrillSpec(checks=checks, app=app)
    return out


def policy_of(policies: list[Policy], source: str) -> Policy | None:
    for p in policies:
        if source in p.sources:
            return p
    return None


def seconds(d: float | None) -> float | None:
    return d


def fmt_seconds(s: float) -> str:
    if s >= 86400 and s % 3600 == 0:
        return f"{s / 3600:.0f} h"
    if s >= 3600:
        return f"{s / 3600:.1f} h".replace(".0 h", " h")
    if s >= 60:
        return f"{s / 60:.1f} min".replace(".0 min", " min")
    return f"{s:.0f} s"


def window(policy: Policy, start: datetime, days: int = 8) -> tuple[datetime, datetime]:
    return start, start + timedelta(days=days)

