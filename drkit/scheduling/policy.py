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
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, with_config

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


SETTINGS = {"sources", "full", "timezone", "incremental", "continuous", "log_flush", "retention", "targets"}


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
        got = validate_section(Policy, data, (), file=where, lines=lines, allowed=SETTINGS,
                               fixed={"name": path.stem, "path": path}, report=problems.append)
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

