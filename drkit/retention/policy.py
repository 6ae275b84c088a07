"""The retention policy model (``sources.<name>.retention`` and ``drkit forget`` flags).

One model for the configuration and (later) ``schedules/*.yaml`` (CONTRACTS.md, "Retention
policy").  Counts of ``keep_last`` and the GFS buckets count *fulls* (backup chains); durations
are restic's spelling: a sequence of ``<number><unit>`` with units ``y`` (years), ``m`` (months),
``w`` (weeks), ``d`` (days) and ``h`` (hours), e.g. ``30d``, ``12h``, ``2w``, ``1y2m``; ``0``
is the empty duration.  Years and months are calendar arithmetic in UTC (as restic).

This module imports nothing of drkit's configuration so that :mod:`drkit.config` can embed it.
"""

from __future__ import annotations

import calendar
import dataclasses
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field, Strict, with_config

_UNIT = {"y": "years", "m": "months", "w": "weeks", "d": "days", "h": "hours"}
_PART = re.compile(r"(\d+)([ymwdh])")


@dataclass(frozen=True)
class Duration:
    """A calendar duration (restic's ``1y2m3d4h``)."""

    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0

    def before(self, t: datetime) -> datetime:
        """``t`` minus this duration (years and months by the calendar, in UTC)."""
        t = t.astimezone(UTC)
        months = t.year * 12 + (t.month - 1) - (self.years * 12 + self.months)
        year, month = divmod(months, 12)
        month += 1
        if year < 1:
            return datetime.min.replace(tzinfo=UTC)
        day = min(t.day, calendar.monthrange(year, month)[1])
        shifted = t.replace(year=year, month=month, day=day)
        try:
            return shifted - timedelta(weeks=self.weeks, days=self.days, hours=self.hours)
        except OverflowError:
            return datetime.min.replace(tzinfo=UTC)

    def is_zero(self) -> bool:
        return not any(dataclasses.astuple(self))

    def __str__(self) -> str:
        text = "".join(f"{getattr(self, f)}{u}" for u, f in _UNIT.items() if getattr(self, f))
        return text or "0"


def parse_duration(text: Any) -> Duration:
    """``"1y2m"`` -> Duration(years=1, months=2).  Raises ValueError naming what is accepted."""
    if isinstance(text, Duration):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"not a duration: {text!r} (use e.g. 30d, 12h, 2w or 1y2m)")
    s = text.strip()
    if s == "0":
        return Duration()
    pos, parts = 0, {}
    for match in _PART.finditer(s):
        if match.start() != pos:
            break
        field_name = _UNIT[match.group(2)]
        if field_name in parts:
            raise ValueError(f"duration {text!r} gives the unit {match.group(2)!r} twice")
        parts[field_name] = int(match.group(1))
        pos = match.end()
    if pos != len(s) or not parts:
        raise ValueError(f"not a duration: {text!r} (numbers with units y, m (months), w, d, h, e.g. 30d, 12h, 1y2m)")
    return Duration(**parts)


def _duration_input(value: Any) -> Any:
    return parse_duration(value)


DurationSetting = Annotated[Duration, BeforeValidator(_duration_input),
                            Field(description="a duration such as 30d, 12h, 2w or 1y2m (units y, m, w, d, h)")]
Count = Annotated[int, Strict(), Field(ge=0, le=1_000_000, description="an integer count (0 .. 1000000)")]

RULES = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly",
         "keep_within", "keep_within_incremental", "pitr_window", "min_fulls")


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class RetentionPolicy:
    """What a source keeps.  Unset rules keep nothing by themselves; the newest full, anything
    younger than the grace period and anything a read lease names are kept regardless."""

    keep_last: Count | None = None
    keep_hourly: Count | None = None
    keep_daily: Count | None = None
    keep_weekly: Count | None = None
    keep_monthly: Count | None = None
    keep_yearly: Count | None = None
    keep_within: DurationSetting | None = None
    keep_within_incremental: DurationSetting | None = None
    pitr_window: DurationSetting | None = None
    min_fulls: Count | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, r) is None for r in RULES)

    def merged(self, overrides: RetentionPolicy | None) -> RetentionPolicy:
        """This policy with every rule ``overrides`` sets replaced."""
        if overrides is None:
            return self
        return dataclasses.replace(self, **{r: getattr(overrides, r) for r in RULES
                                            if getattr(overrides, r) is not None})

    def describe(self) -> str:
        return ", ".join(f"{r}={getattr(self, r)}" for r in RULES if getattr(self, r) is not None) or "(empty)"

    def as_dict(self) -> dict[str, Any]:
        return {r: (str(v) if isinstance(v, Duration) else v) for r in RULES if (v := getattr(self, r)) is not None}
