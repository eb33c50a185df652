"""Server-rendered charts: SVG time series with stage and rollback markers, and the geometry of stacked bars."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 14, 24
PLOT_WIDTH, PLOT_HEIGHT = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
# Past this many points a chart draws only its lines: a dot (with its tooltip) per point would weigh too much.
MAX_DOTS = 240
_TIME_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)
# Series colours live in dashboard.css (by role); bars take theirs from here, one per version in order.
PALETTE = ("#4a86c7", "#3a9a3a", "#d08a2b", "#8a5cb8", "#2fa3a3", "#c75a8a", "#a39a2f", "#6b7fd6")
OTHER_COLOR, NOTHING_COLOR = "#8c8c8c", "#c4c4c4"
MAX_VERSIONS = len(PALETTE)
ROLE_LABELS = {"new": "new", "baseline": "baseline", "b": "B"}


@dataclass(frozen=True)
class Line:
    """One series: its label, its role (new, baseline, b: the CSS class) and (time, value) points in time order."""

    label: str
    role: str
    points: list[tuple[datetime, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Marker:
    """A vertical line at a moment: a stage starting (kind "stage") or the rollback (kind "rollback")."""

    at: datetime
    kind: str
    label: str
    title: str


def nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times 10^k that is at least `raw`."""
    exponent = math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * 10**exponent >= raw * (1 - 1e-9):
            return factor * 10**exponent
    return 10 ** (exponent + 1)  # pragma: no cover - the loop always returns


def value_ticks(top: float, *, count: int = 4) -> list[float]:
    """Round tick values from 0 up to a round number at or above `top` (at least 1 when there is nothing)."""
    top = top if top > 0 else 1
    step = nice_step(top / count)
    steps = max(1, math.ceil(top / step - 1e-9))
    return [round(step * n, 10) for n in range(steps + 1)]


def _decimals(step: float) -> int:
    decimals = 0
    while decimals < 6 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-9:
        decimals += 1
    return decimals


def number(value: float) -> str:
    """A figure with about three significant digits and no exponent: 1234, 26.5, 0.105."""
    if value == 0:
        return "0"
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}".rstrip("0").rstrip(".") if decimals else f"{value:.0f}"


def duration(seconds: int) -> str:
    """1 min, 15 min, 4 h, 1 d."""
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def time_ticks(start: datetime, end: datetime, *, most: int = 6) -> list[datetime]:
    """Round moments (whole minutes, hours, days in UTC) between start and end, at most `most` of them."""
    span = (end - start).total_seconds()
    step = next((s for s in _TIME_STEPS if span / s <= most), _TIME_STEPS[-1])
    first = math.ceil(start.timestamp() / step) * step
    return [datetime.fromtimestamp(t, UTC) for t in range(first, int(end.timestamp()) + 1, step)]


class Scale:
    """Maps (time, value) onto the plot area: time left to right, value bottom (0) to top (`top`)."""

    def __init__(self, start: datetime, end: datetime, top: float):
        self.start, self.seconds, self.top = start, max((end - start).total_seconds(), 1.0), top

    def x(self, at: datetime) -> float:
        return round(LEFT + PLOT_WIDTH * (at - self.start).total_seconds() / self.seconds, 1)

    def y(self, value: float) -> float:
        return round(TOP + PLOT_HEIGHT * (1 - value / self.top), 1)


def _segments(points: list[tuple[datetime, float]], gap: timedelta) -> list[list[tuple[datetime, float]]]:
    """Splits a line where data is missing for longer than `gap`: a chart must not draw what was not measured."""
    segments: list[list[tuple[datetime, float]]] = []
    for point in points:
        if segments and point[0] - segments[-1][-1][0] <= gap:
            segments[-1].append(point)
        else:
            segments.append([point])
    return segments


def time_chart(*, key: str, title: str, unit: str, lines: list[Line], markers: list[Marker], start: datetime,
               end: datetime, gap: timedelta) -> SafeString:
    """An SVG line chart of `lines` between start and end, with vertical markers; values below 0 are clipped."""
    values = [value for line in lines for _at, value in line.points]
    ticks = value_ticks(max(values, default=0))
    scale = Scale(start, end, ticks[-1])
    decimals = _decimals(ticks[1] - ticks[0])
    short = "%H:%M" if end - start <= timedelta(days=1) else "%m-%d %H:%M"
    parts = [format_html('<svg class="hs-chart" data-chart="{}" viewBox="0 0 {} {}" role="img" aria-label="{}">'
                         "<title>{}</title>", key, WIDTH, HEIGHT, title, title)]
    for tick in ticks:
        y = scale.y(tick)
        parts.append(format_html('<line class="grid" x1="{}" x2="{}" y1="{}" y2="{}"></line>'
                                 '<text class="tick y" x="{}" y="{}">{}</text>',
                                 LEFT, WIDTH - RIGHT, y, y, LEFT - 4, y + 4, f"{tick:.{decimals}f}"))
    for moment in time_ticks(start, end):
        x = scale.x(moment)
        parts.append(format_html('<line class="tick-mark" x1="{}" x2="{}" y1="{}" y2="{}"></line>'
                                 '<text class="tick x" x="{}" y="{}">{}</text>',
                                 x, x, HEIGHT - BOTTOM, HEIGHT - BOTTOM + 4, x, HEIGHT - 6, moment.strftime(short)))
    parts.append(format_html('<text class="unit" x="{}" y="{}">{}</text>', LEFT + 4, TOP - 4, unit))
    for marker in markers:
        if not start <= marker.at <= end:
            continue
        x = scale.x(marker.at)
        parts.append(format_html('<g class="marker {}" data-at="{}"><title>{}</title>'
                                 '<line x1="{}" x2="{}" y1="{}" y2="{}"></line>'
                                 '<text x="{}" y="{}">{}</text></g>',
                                 marker.kind, marker.at.isoformat(), marker.title, x, x, TOP, HEIGHT - BOTTOM,
                                 x + 3, TOP + 10, marker.label))
    dots = len(values) <= MAX_DOTS
    for line in lines:
        parts.append(format_html('<g class="line {}" data-role="{}" data-label="{}">', line.role, line.role,
                                 line.label))
        for segment in _segments(line.points, gap):
            coordinates = " ".join(f"{scale.x(at)},{scale.y(max(value, 0))}" for at, value in segment)
            if len(segment) > 1:
                parts.append(format_html('<polyline class="series {}" points="{}"></polyline>', line.role,
                                         coordinates))
            if not dots and len(segment) > 1:
                continue
            for at, value in segment:
                parts.append(format_html('<circle class="point {}" cx="{}" cy="{}" r="2.5"><title>{} {}: {} {}'
                                         "</title></circle>", line.role, scale.x(at), scale.y(max(value, 0)),
                                         line.label, at.strftime(short), number(value), unit))
        parts.append(mark_safe("</g>"))
    if not values:
        parts.append(format_html('<text class="empty" x="{}" y="{}">No telemetry yet</text>',
                                 LEFT + PLOT_WIDTH / 2, TOP + PLOT_HEIGHT / 2))
    parts.append(format_html('<rect class="frame" x="{}" y="{}" width="{}" height="{}"></rect></svg>',
                             LEFT, TOP, PLOT_WIDTH, PLOT_HEIGHT))
    return mark_safe("".join(parts))  # noqa: S308 - every part went through format_html


def distribution_charts(metrics: dict, *, distribution, now: datetime) -> dict:
    """The charts of one distribution from distribution_metrics: p99 latency and error rate per version role
    (new, baseline, B), stage starts as dashed lines and the rollback as a red one."""
    ab_test = bool(distribution.version_b_id)
    latency, errors, legend = [], [], []
    for serie in sorted(metrics["series"], key=lambda s: (s["role"] != "new", s["role"], s["version"] or "")):
        role = serie["role"]
        label = f"{'A' if ab_test and role == 'new' else ROLE_LABELS.get(role, role)} {serie['version']}"
        legend.append({"role": role, "label": label})
        latency.append(Line(label, role, [(p["at"], p["latency_p99_ms"]) for p in serie["points"]
                                          if p["latency_p99_ms"] is not None]))
        errors.append(Line(label, role, [(p["at"], 100 * p["error_rate"]) for p in serie["points"]
                                         if p["error_rate"] is not None]))
    markers = [Marker(stage["started_at"], "stage", f"S{stage['index'] + 1}",
                      f"{stage['name']} started {stage['started_at']:%Y-%m-%d %H:%M:%S} UTC")
               for stage in metrics["stages"] if stage["started_at"]]
    if metrics["rolled_back_at"]:
        reason = f": {metrics['rollback_reason']}" if metrics["rollback_reason"] else ""
        markers.append(Marker(metrics["rolled_back_at"], "rollback", "rollback",
                              f"Rolled back {metrics['rolled_back_at']:%Y-%m-%d %H:%M:%S} UTC{reason}"))
    step = timedelta(seconds=metrics["interval_seconds"])
    moments = [at for line in latency + errors for at, _value in line.points] + [m.at for m in markers]
    start = min(moments, default=distribution.started_at or distribution.scheduled_at)
    end = max([*moments, min(metrics["until"], now)])
    if end - start < step:
        end = start + step
    # Keep the last points and markers off the frame's edges.
    start, end = start - step / 2, end + step / 2
    common = {"markers": markers, "start": start, "end": end, "gap": step * 2}
    return {
        "distribution_id": distribution.pk,
        "interval_seconds": metrics["interval_seconds"],
        "resolution": duration(metrics["interval_seconds"]),
        "legend": legend,
        "rolled_back_at": metrics["rolled_back_at"],
        "rollback_reason": metrics["rollback_reason"],
        "charts": [
            {"key": "latency", "title": "p99 latency (ms)",
             "svg": time_chart(key="latency", title="p99 latency", unit="ms", lines=latency, **common)},
            {"key": "errors", "title": "Error rate (%)",
             "svg": time_chart(key="errors", title="Error rate", unit="%", lines=errors, **common)},
        ],
    }


def stacked_bar(counts: list[tuple[str, int]], colors: dict[str, str]) -> dict:
    """A stacked bar of (label, count) parts: each part's count, width (%) and colour, and the total."""
    total = sum(count for _label, count in counts)
    return {"total": total, "parts": [
        {"label": label, "count": count, "percent": round(100 * count / total, 2) if total else 0,
         "color": colors[label]} for label, count in counts]}


def versions_by_model(rows: list[dict]) -> list[dict]:
    """Per model (by name), the stacked bars of the versions of it each region runs (fleet_versions_by_model)."""
    models: dict[str, list[dict]] = {}
    for row in rows:
        models.setdefault(row["model"], []).append(row)
    return [{"model": model, **versions_by_region(model_rows)} for model, model_rows in sorted(models.items())]


def versions_by_region(rows: list[dict], *, nothing: str = "nothing reported") -> dict:
    """Stacked bars of the versions each region runs, from rows of (region, version or None, devices).

    The MAX_VERSIONS most common versions keep a colour of their own (the same in every bar); the rest are
    counted together as "other versions".
    """
    totals: dict[str, int] = {}
    for row in rows:
        if row["version"] is not None:
            totals[row["version"]] = totals.get(row["version"], 0) + row["devices"]
    ranked = sorted(totals, key=lambda version: (-totals[version], version))
    named, other = ranked[:MAX_VERSIONS], "other versions"
    colors = {**dict(zip(named, PALETTE, strict=False)), other: OTHER_COLOR, nothing: NOTHING_COLOR}
    order = [*named, other, nothing]
    per_region: dict[str, dict[str, int]] = {}
    for row in rows:
        label = nothing if row["version"] is None else row["version"] if row["version"] in named else other
        counts = per_region.setdefault(row["region"], {})
        counts[label] = counts.get(label, 0) + row["devices"]
    legend_totals = {label: sum(counts.get(label, 0) for counts in per_region.values()) for label in order}
    return {
        "legend": [{"label": label, "color": colors[label], "devices": legend_totals[label]}
                   for label in order if legend_totals[label]],
        "regions": [{"region": region, "bar": stacked_bar([(label, counts[label]) for label in order
                                                            if counts.get(label)], colors)}
                    for region, counts in sorted(per_region.items())],
    }
