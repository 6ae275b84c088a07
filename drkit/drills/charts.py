"""Inline SVG charts for the drill and quarterly reports: no script, no external reference (not
even an ``xmlns`` URL: inline SVG in HTML needs none).

Every label that comes from a record goes through :func:`esc`; numbers are formatted here.  The
charts are plain ``<svg>`` elements with a ``class`` naming what they show (``chart-phases``,
``chart-timeline``, ``chart-series``, ``chart-passfail``) so that a test can find them in a
rendered DOM.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime

PALETTE = ["#3b6fb6", "#e08a2c", "#4c9a52", "#b8483e", "#7d5ba6", "#2f9c9c", "#a0782f", "#c05c9b"]
OK, BAD, GRID, INK, MUTED = "#4c9a52", "#b8483e", "#d8d8d8", "#222222", "#6b6b6b"


def esc(value: object) -> str:
    """Text for HTML (element content and quoted attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt_seconds(v: float | None) -> str:
    if v is None:
        return "unbounded"
    if abs(v) < 120:
        return f"{v:.2f} s" if abs(v) < 1 else f"{v:.1f} s" if abs(v) < 10 else f"{v:.0f} s"
    if abs(v) < 7200:
        return f"{v / 60:.1f} min"
    return f"{v / 3600:.1f} h"


def parse_iso(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)


def _svg(cls: str, width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg class="{cls}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}"><title>{esc(title)}</title>'
            + "".join(body) + "</svg>")


def phases_bar(phases: dict[str, float], title: str = "RTO by phase", width: int = 720) -> str:
    """One horizontal bar, a segment per phase in order, labelled inside when it fits and in a
    legend below with its seconds and share."""
    items = [(str(k), float(v)) for k, v in phases.items() if isinstance(v, (int, float)) and v >= 0]
    total = sum(v for _, v in items)
    left, bar_w, bar_y, bar_h = 10, width - 20, 28, 34
    body = [f'<text x="{left}" y="18" font-size="13" fill="{INK}">{esc(title)}: {esc(fmt_seconds(total))}</text>']
    if total <= 0:
        body.append(f'<text x="{left}" y="{bar_y + 22}" font-size="12" fill="{MUTED}">no phase measured</text>')
        return _svg("chart-phases", width, bar_y + bar_h + 10, title, body)
    x = float(left)
    for i, (name, v) in enumerate(items):
        w = bar_w * v / total
        color = PALETTE[i % len(PALETTE)]
        body.append(f'<rect class="phase" x="{x:.2f}" y="{bar_y}" width="{max(w, 0.5):.2f}" height="{bar_h}" '
                    f'fill="{color}"><title>{esc(name)}: {esc(fmt_seconds(v))}</title></rect>')
        label = f"{name} {fmt_seconds(v)}"
        if w > 7 * len(label):
            body.append(f'<text x="{x + 5:.2f}" y="{bar_y + 22}" font-size="12" fill="#ffffff">{esc(label)}</text>')
        x += w
    y = bar_y + bar_h + 20
    lx = left
    for i, (name, v) in enumerate(items):
        label = f"{name}: {fmt_seconds(v)} ({100 * v / total:.0f} %)"
        step = 18 + 7 * len(label)
        if lx + step > width and lx > left:
            lx, y = left, y + 18
        body.append(f'<rect x="{lx}" y="{y - 10}" width="11" height="11" fill="{PALETTE[i % len(PALETTE)]}"/>'
                    f'<text class="legend" x="{lx + 15}" y="{y}" font-size="12" fill="{INK}">{esc(label)}</text>')
        lx += step
    return _svg("chart-phases", width, y + 10, title, body)


def _ticks(t0: float, t1: float, n: int = 5) -> list[float]:
    if t1 <= t0:
        return [t0]
    return [t0 + (t1 - t0) * i / (n - 1) for i in range(n)]


def _time_label(ts: float, span: float) -> str:
    dt = datetime.fromtimestamp(ts, UTC)
    if span > 3 * 86400:
        return f"{dt:%Y-%m-%d}"
    if span >= 3600:
        return f"{dt:%m-%d %H:%M}"
    return f"{dt:%H:%M:%S}" if span >= 60 else f"{dt:%H:%M:%S}.{dt.microsecond // 1000:03d}"


def timeline(spans: Sequence[tuple[datetime, datetime, str, str]], markers: Sequence[tuple[datetime, str, str]],
             shade: tuple[datetime, datetime, str] | None = None, title: str = "Backups, log coverage and RPO",
             width: int = 720) -> str:
    """A time axis with ``spans`` (start, end, kind, label): a kind "backup" span of zero length
    is drawn as a diamond, any other as a bar of log coverage; ``markers`` (time, label, colour)
    as vertical lines; ``shade`` (start, end, label) as a hatched band -- the RPO gap."""
    times = [t for s in spans for t in s[:2]] + [m[0] for m in markers] + (list(shade[:2]) if shade else [])
    if not times:
        return ""
    t0, t1 = min(times).timestamp(), max(times).timestamp()
    pad = (t1 - t0) * 0.05 if t1 > t0 else 1.0
    t0, t1 = t0 - pad, t1 + pad
    left, right, top = 10, width - 10, 26
    row_h = 22
    rows = 2  # row 0: backups, row 1: log coverage
    axis_y = top + rows * row_h + 12
    height = axis_y + 30 + 18 * len(markers) + (18 if shade else 0)

    def x(dt: datetime) -> float:
        return left + (right - left) * (dt.timestamp() - t0) / (t1 - t0)

    body = [f'<text x="{left}" y="16" font-size="13" fill="{INK}">{esc(title)}</text>',
            f'<line x1="{left}" y1="{axis_y}" x2="{right}" y2="{axis_y}" stroke="{MUTED}"/>']
    for tick in _ticks(t0 + pad, t1 - pad):
        tx = left + (right - left) * (tick - t0) / (t1 - t0)
        body.append(f'<line x1="{tx:.2f}" y1="{top}" x2="{tx:.2f}" y2="{axis_y + 4}" stroke="{GRID}"/>'
                    f'<text x="{tx:.2f}" y="{axis_y + 16}" font-size="10" fill="{MUTED}" text-anchor="middle">'
                    f'{esc(_time_label(tick, t1 - t0))}</text>')
    if shade:
        a, b = sorted((x(shade[0]), x(shade[1])))
        body.append(f'<rect class="rpo-gap" x="{a:.2f}" y="{top}" width="{max(b - a, 1):.2f}" height="{rows * row_h}" '
                    f'fill="{BAD}" fill-opacity="0.18" stroke="{BAD}" stroke-dasharray="3 2">'
                    f'<title>{esc(shade[2])}</title></rect>')
    for start, end, kind, label in spans:
        if kind == "backup" or start == end:
            cx, cy = x(start), top + row_h / 2
            body.append(f'<path class="backup" d="M{cx:.2f} {cy - 7:.2f} L{cx + 6:.2f} {cy:.2f} L{cx:.2f} {cy + 7:.2f} '
                        f'L{cx - 6:.2f} {cy:.2f} Z" fill="{PALETTE[0]}"><title>{esc(label)}</title></path>')
        else:
            a, b = x(start), x(end)
            body.append(f'<rect class="coverage" x="{a:.2f}" y="{top + row_h + 4}" width="{max(b - a, 1.5):.2f}" '
                        f'height="{row_h - 8}" fill="{PALETTE[2]}" fill-opacity="0.75"><title>{esc(label)}</title></rect>')
    y = axis_y + 34
    for when, label, color in markers:
        mx = x(when)
        body.append(f'<line class="marker" x1="{mx:.2f}" y1="{top - 4}" x2="{mx:.2f}" y2="{axis_y}" stroke="{color}" '
                    f'stroke-width="2"/><rect x="{left}" y="{y - 10}" width="11" height="3" fill="{color}"/>'
                    f'<text x="{left + 16}" y="{y}" font-size="12" fill="{INK}">{esc(label)}</text>')
        y += 18
    if shade:
        body.append(f'<rect x="{left}" y="{y - 10}" width="11" height="11" fill="{BAD}" fill-opacity="0.3"/>'
                    f'<text x="{left + 16}" y="{y}" font-size="12" fill="{INK}">{esc(shade[2])}</text>')
    body.append(f'<text x="{right}" y="{top + row_h / 2 + 4}" font-size="10" fill="{MUTED}" text-anchor="end">backups</text>'
                f'<text x="{right}" y="{top + 1.5 * row_h + 4}" font-size="10" fill="{MUTED}" text-anchor="end">'
                'log coverage</text>')
    return _svg("chart-timeline", width, int(height), title, body)


def series(points: dict[str, list[tuple[datetime, float | None, bool]]], title: str, target: float | None = None,
           width: int = 720, height: int = 240, divider: tuple[datetime, str] | None = None) -> str:
    """Values over time, a colour per series (e.g. RPO of each source's drills): a filled dot for
    a passed drill, a ring in red for a failed one, an upward triangle at the top for an
    unbounded (None) value; the target as a dashed line when it is on the scale; ``divider``
    (time, label) as a vertical line, e.g. where the reported quarter starts."""
    flat = [(t, v) for pts in points.values() for t, v, _ in pts]
    if not flat:
        return ""
    values = [v for _, v in flat if v is not None]
    vmax = max(values, default=1.0) or 1.0
    target_on = target is not None and target <= 3 * vmax
    if target_on:
        vmax = max(vmax, float(target))  # type: ignore[arg-type]
    vmax *= 1.1
    t0 = min(t for t, _ in flat).timestamp()
    t1 = max(t for t, _ in flat).timestamp()
    pad = max((t1 - t0) * 0.04, 60.0)
    t0, t1 = t0 - pad, t1 + pad
    left, right, top, bottom = 62, width - 10, 24, height - 44

    def px(t: datetime) -> float:
        return left + (right - left) * (t.timestamp() - t0) / (t1 - t0)

    def py(v: float) -> float:
        return bottom - (bottom - top) * v / vmax

    body = [f'<text x="10" y="16" font-size="13" fill="{INK}">{esc(title)}</text>',
            f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="{MUTED}"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="{MUTED}"/>']
    for i in range(5):
        v = vmax / 1.1 * i / 4
        body.append(f'<line x1="{left}" y1="{py(v):.2f}" x2="{right}" y2="{py(v):.2f}" stroke="{GRID}"/>'
                    f'<text x="{left - 4}" y="{py(v) + 4:.2f}" font-size="10" fill="{MUTED}" text-anchor="end">'
                    f'{esc(fmt_seconds(v))}</text>')
    for tick in _ticks(t0 + pad, t1 - pad, 4):
        tx = left + (right - left) * (tick - t0) / (t1 - t0)
        body.append(f'<text x="{tx:.2f}" y="{bottom + 14}" font-size="10" fill="{MUTED}" text-anchor="middle">'
                    f'{esc(_time_label(tick, t1 - t0))}</text>')
    if divider is not None and t0 <= divider[0].timestamp() <= t1:
        dx = px(divider[0])
        body.append(f'<line class="divider" x1="{dx:.2f}" y1="{top}" x2="{dx:.2f}" y2="{bottom}" stroke="{MUTED}" '
                    f'stroke-dasharray="2 3"/><text x="{dx + 3:.2f}" y="{top + 10}" font-size="10" fill="{MUTED}">'
                    f'{esc(divider[1])}</text>')
    if target_on:
        body.append(f'<line class="target" x1="{left}" y1="{py(target):.2f}" x2="{right}" y2="{py(target):.2f}" '  # type: ignore[arg-type]
                    f'stroke="{BAD}" stroke-dasharray="6 4"/><text x="{right}" y="{py(target) - 4:.2f}" '  # type: ignore[arg-type]
                    f'font-size="10" fill="{BAD}" text-anchor="end">target {esc(fmt_seconds(target))}</text>')
    elif target is not None:
        body.append(f'<text x="{right}" y="{top - 6}" font-size="10" fill="{MUTED}" text-anchor="end">'
                    f'target {esc(fmt_seconds(target))} (above the scale)</text>')
    legend_x = left
    for i, (name, pts) in enumerate(sorted(points.items())):
        color = PALETTE[i % len(PALETTE)]
        ordered = sorted(pts, key=lambda p: p[0])
        line = [f"{px(t):.2f},{py(v):.2f}" for t, v, _ in ordered if v is not None]
        if len(line) > 1:
            body.append(f'<polyline points="{" ".join(line)}" fill="none" stroke="{color}" stroke-opacity="0.6"/>')
        for t, v, ok in ordered:
            tip = f"{name} {t:%Y-%m-%d %H:%M} UTC: {fmt_seconds(v)}{'' if ok else ' (failed)'}"
            if v is None:
                cx = px(t)
                body.append(f'<path class="point unbounded" d="M{cx - 5:.2f} {top + 8} L{cx:.2f} {top} L{cx + 5:.2f} '
                            f'{top + 8} Z" fill="{BAD}"><title>{esc(tip)}</title></path>')
            elif ok:
                body.append(f'<circle class="point" cx="{px(t):.2f}" cy="{py(v):.2f}" r="4" fill="{color}">'
                            f'<title>{esc(tip)}</title></circle>')
            else:
                body.append(f'<circle class="point failed" cx="{px(t):.2f}" cy="{py(v):.2f}" r="5" fill="#ffffff" '
                            f'stroke="{BAD}" stroke-width="2"><title>{esc(tip)}</title></circle>')
        body.append(f'<circle cx="{legend_x + 5}" cy="{height - 14}" r="4" fill="{color}"/>'
                    f'<text class="legend" x="{legend_x + 13}" y="{height - 10}" font-size="11" fill="{INK}">'
                    f'{esc(name)}</text>')
        legend_x += 30 + 7 * len(name)
    return _svg("chart-series", width, height, title, body)


def pass_fail(rows: Sequence[tuple[str, int, int]], title: str = "Drills passed and failed",
              width: int = 720) -> str:
    """A horizontal bar per (label, passed, failed); an empty bar says "no drill"."""
    if not rows:
        return ""
    most = max((p + f for _, p, f in rows), default=0) or 1
    label_w, top, bar_h, gap = 170, 26, 18, 8
    height = top + len(rows) * (bar_h + gap) + 24
    body = [f'<text x="10" y="16" font-size="13" fill="{INK}">{esc(title)}</text>']
    scale = (width - label_w - 140) / most
    for i, (label, passed, failed) in enumerate(rows):
        y = top + i * (bar_h + gap)
        body.append(f'<text x="{label_w - 6}" y="{y + 13}" font-size="12" fill="{INK}" text-anchor="end">'
                    f'{esc(label)}</text>')
        if passed:
            body.append(f'<rect class="passed" x="{label_w}" y="{y}" width="{passed * scale:.2f}" height="{bar_h}" '
                        f'fill="{OK}"><title>{passed} passed</title></rect>')
        if failed:
            body.append(f'<rect class="failed" x="{label_w + passed * scale:.2f}" y="{y}" width="{failed * scale:.2f}" '
                        f'height="{bar_h}" fill="{BAD}"><title>{failed} failed</title></rect>')
        text = "no drill" if passed + failed == 0 else f"{passed} passed, {failed} failed"
        body.append(f'<text x="{label_w + (passed + failed) * scale + 6:.2f}" y="{y + 13}" font-size="11" '
                    f'fill="{MUTED if passed + failed == 0 else INK}">{text}</text>')
    return _svg("chart-passfail", width, height, title, body)
