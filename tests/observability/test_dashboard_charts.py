"""The dashboard's server-rendered charts: known points draw known lines, markers sit at their moments."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from hotswap.dashboard.charts import (
    HEIGHT,
    LEFT,
    PLOT_HEIGHT,
    PLOT_WIDTH,
    TOP,
    Line,
    Marker,
    distribution_charts,
    duration,
    number,
    time_chart,
    time_ticks,
    value_ticks,
    versions_by_region,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def chart(lines, markers=(), *, start=T0, end=T0 + 10 * MINUTE, gap=10 * MINUTE) -> str:
    return str(time_chart(key="latency", title="p99 latency", unit="ms", lines=list(lines), markers=list(markers),
                          start=start, end=end, gap=gap))


def polylines(svg: str, role: str) -> list[str]:
    return re.findall(rf'<polyline class="series {role}" points="([^"]*)"', svg)


def test_it_draws_known_points_where_they_belong():
    svg = chart([Line("new resnet-1.1.0", "new", [(T0, 10.0), (T0 + 5 * MINUTE, 20.0)]),
                 Line("baseline resnet-1.0.0", "baseline", [(T0, 5.0), (T0 + 10 * MINUTE, 5.0)])])

    # 0..20 ms over the plot's height, 12:00..12:10 over its width.
    assert (LEFT, TOP, PLOT_WIDTH, PLOT_HEIGHT) == (48, 14, 580, 162)
    assert polylines(svg, "new") == ["48.0,95.0 338.0,14.0"]
    assert polylines(svg, "baseline") == ["48.0,135.5 628.0,135.5"]
    assert re.findall(r'<text class="tick y"[^>]*>([^<]*)<', svg) == ["0", "5", "10", "15", "20"]
    assert re.findall(r'<text class="tick x"[^>]*>([^<]*)<', svg) == ["12:00", "12:02", "12:04", "12:06", "12:08",
                                                                       "12:10"]
    # One dot per point, each with its figure as a tooltip.
    assert '<circle class="point new" cx="338.0" cy="14.0" r="2.5"><title>new resnet-1.1.0 12:05: 20 ms</title>' in svg
    assert svg.count('class="point baseline"') == 2
    assert 'data-role="new" data-label="new resnet-1.1.0"' in svg
    assert "No telemetry yet" not in svg


def test_stage_starts_and_the_rollback_are_vertical_lines_at_their_moments():
    svg = chart([Line("new", "new", [(T0, 1.0), (T0 + MINUTE, 2.0)])], [
        Marker(T0 + 2 * MINUTE, "stage", "S1", "Stage 1 started"),
        Marker(T0 + 4 * MINUTE, "stage", "S2", "Stage 2 started"),
        Marker(T0 + 5 * MINUTE, "rollback", "rollback", "Rolled back: latency"),
        Marker(T0 + 30 * MINUTE, "stage", "S3", "outside the chart"),
    ])

    lines = re.findall(r'<g class="marker (\w+)" data-at="([^"]+)"><title>([^<]*)</title><line x1="([\d.]+)" '
                       rf'x2="\4" y1="{TOP}" y2="{HEIGHT - 24}">', svg)
    assert [(kind, x, title) for kind, _at, title, x in lines] == [
        ("stage", "164.0", "Stage 1 started"), ("stage", "280.0", "Stage 2 started"),
        ("rollback", "338.0", "Rolled back: latency")]
    assert "outside the chart" not in svg


def test_missing_data_breaks_the_line_and_a_lone_point_is_a_dot():
    points = [(T0, 1.0), (T0 + MINUTE, 2.0), (T0 + 6 * MINUTE, 2.0), (T0 + 9 * MINUTE, 1.0), (T0 + 10 * MINUTE, 1.0)]
    svg = chart([Line("new", "new", points)], gap=2 * MINUTE)

    assert polylines(svg, "new") == ["48.0,95.0 106.0,14.0", "570.0,95.0 628.0,95.0"]
    assert '<circle class="point new" cx="396.0" cy="14.0"' in svg  # 12:06, alone between two gaps


def test_an_empty_chart_says_so_and_values_are_escaped():
    svg = chart([Line("<script>", "new", [])])
    assert "No telemetry yet" in svg
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert re.findall(r'<text class="tick y"[^>]*>([^<]*)<', svg) == ["0.00", "0.25", "0.50", "0.75", "1.00"]


def test_many_points_draw_lines_without_dots():
    points = [(T0 + timedelta(seconds=n), float(n)) for n in range(300)]
    svg = chart([Line("new", "new", points)], end=T0 + 5 * MINUTE)
    assert len(polylines(svg, "new")) == 1
    assert "<circle" not in svg


def test_ticks_and_numbers_are_round():
    assert value_ticks(21) == [0, 10, 20, 30]
    assert value_ticks(0.1) == [0, 0.025, 0.05, 0.075, 0.1]
    assert value_ticks(0) == [0, 0.25, 0.5, 0.75, 1]
    assert [number(v) for v in (0, 0.0001, 0.105, 26.54, 1234.5)] == ["0", "0.0001", "0.105", "26.5", "1234"]
    assert [duration(s) for s in (60, 900, 14400, 86400, 90)] == ["1 min", "15 min", "4 h", "1 d", "90 s"]
    hours = time_ticks(T0 - timedelta(hours=5, minutes=10), T0)
    assert [t.strftime("%H:%M") for t in hours] == ["07:00", "08:00", "09:00", "10:00", "11:00", "12:00"]


def _metrics(series, *, stages=(), rolled_back_at=None, reason=""):
    return {"since": T0 - 30 * MINUTE, "until": T0 + 60 * MINUTE, "interval_seconds": 60, "series": series,
            "stages": list(stages), "rolled_back_at": rolled_back_at, "rollback_reason": reason}


def _point(at, *, p99=None, error_rate=None):
    return {"at": at, "latency_p99_ms": p99, "error_rate": error_rate}


def test_a_distribution_gets_a_latency_and_an_error_rate_chart_new_against_baseline():
    distribution = SimpleNamespace(pk=7, version_b_id=None, started_at=T0, scheduled_at=T0)
    metrics = _metrics(
        [{"version": "resnet-1.0.0", "role": "baseline", "group": None,
          "points": [_point(T0, p99=20.0, error_rate=0.001), _point(T0 + MINUTE, p99=21.0, error_rate=0.002)]},
         {"version": "resnet-1.1.0", "role": "new", "group": None,
          "points": [_point(T0 + MINUTE, p99=30.0, error_rate=0.05), _point(T0 + 2 * MINUTE)]}],
        stages=[{"index": 0, "name": "Canary", "started_at": T0, "finished_at": None, "verdict": ""},
                {"index": 1, "name": "Everyone", "started_at": None, "finished_at": None, "verdict": ""}],
        rolled_back_at=T0 + 2 * MINUTE, reason="p99 latency +50 %")

    charts = distribution_charts(metrics, distribution=distribution, now=T0 + 3 * MINUTE)

    assert charts["legend"] == [{"role": "new", "label": "new resnet-1.1.0"},
                                {"role": "baseline", "label": "baseline resnet-1.0.0"}]
    assert charts["resolution"] == "1 min"
    latency, errors = (str(c["svg"]) for c in charts["charts"])
    assert [c["key"] for c in charts["charts"]] == ["latency", "errors"]
    # A point without figures is left out: the new version's line has one point, a dot.
    assert polylines(latency, "new") == [] and latency.count('class="point new"') == 1
    assert "new resnet-1.1.0 12:01: 30 ms" in latency
    assert "new resnet-1.1.0 12:01: 5 %" in errors  # error rates are drawn in percent
    assert len(polylines(errors, "baseline")) == 1
    for svg in (latency, errors):
        assert svg.count('class="marker stage"') == 1  # the stage that never started has no line
        assert svg.count('class="marker rollback"') == 1 and "p99 latency +50 %" in svg


def test_an_ab_test_names_its_versions_a_and_b():
    distribution = SimpleNamespace(pk=8, version_b_id=3, started_at=T0, scheduled_at=T0)
    metrics = _metrics([{"version": "resnet-2.1.0", "role": "b", "group": None, "points": []},
                        {"version": "resnet-2.0.0", "role": "new", "group": None, "points": []}])
    charts = distribution_charts(metrics, distribution=distribution, now=T0)
    assert [item["label"] for item in charts["legend"]] == ["A resnet-2.0.0", "B resnet-2.1.0"]
    assert all("No telemetry yet" in str(c["svg"]) for c in charts["charts"])


def test_versions_by_region_stack_with_one_colour_per_version_everywhere():
    rows = [{"region": "eu", "version": "resnet-1.0.0", "devices": 6}, {"region": "eu", "version": None, "devices": 2},
            {"region": "eu", "version": "resnet-1.1.0", "devices": 2},
            {"region": "us", "version": "resnet-1.1.0", "devices": 5}]
    shaped = versions_by_region(rows)

    assert [(item["label"], item["devices"]) for item in shaped["legend"]] == [
        ("resnet-1.1.0", 7), ("resnet-1.0.0", 6), ("nothing reported", 2)]
    eu, us = shaped["regions"]
    assert eu["region"] == "eu" and eu["bar"]["total"] == 10
    assert [(p["label"], p["count"], p["percent"]) for p in eu["bar"]["parts"]] == [
        ("resnet-1.1.0", 2, 20.0), ("resnet-1.0.0", 6, 60.0), ("nothing reported", 2, 20.0)]
    assert us["bar"]["parts"][0]["color"] == eu["bar"]["parts"][0]["color"]


def test_versions_past_the_palette_are_counted_together():
    rows = [{"region": "eu", "version": f"m-1.{n}.0", "devices": 20 - n} for n in range(10)]
    shaped = versions_by_region(rows)
    (eu,) = shaped["regions"]
    assert len(eu["bar"]["parts"]) == 9
    assert eu["bar"]["parts"][-1] == {"label": "other versions", "count": 11 + 12, "percent": round(2300 / 155, 2),
                                      "color": "#8c8c8c"}
