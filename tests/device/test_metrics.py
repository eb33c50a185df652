"""Metric windows: exact percentiles, the fixed histogram, bounded memory, and one window per version."""

from __future__ import annotations

from datetime import datetime

import pytest

from hotswap_device.metrics import (
    HISTOGRAM_LENGTH,
    MetricsRecorder,
    bucket_index,
    percentile_from_histogram,
)

T0 = 1_800_000_000.0  # a fixed epoch second, so windows are predictable


def test_it_computes_exact_percentiles_and_the_histogram_from_known_latencies():
    recorder = MetricsRecorder(window_seconds=60)
    for latency in range(1, 101):  # 1 .. 100 ms
        recorder.record("resnet", "1.0.0", float(latency), ok=latency % 10 != 0, now=T0 + latency / 10)

    [window] = recorder.collect(now=T0 + 60)

    assert window["latency_ms"] == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert (window["inference_count"], window["error_count"]) == (100, 10)
    # Buckets (ms, upper bounds inclusive): <=1, <=2, <=5, <=10, <=20, <=50, <=100, <=200, ...
    assert window["latency_histogram"] == [1, 1, 3, 5, 10, 30, 50, 0, 0, 0, 0, 0, 0]
    assert sum(window["latency_histogram"]) == window["inference_count"]
    assert window["window_start"] == "2027-01-15T08:00:00.000Z"
    assert window["window_end"] == "2027-01-15T08:01:00.000Z"


def test_it_puts_latencies_on_bucket_bounds_in_the_lower_bucket_and_huge_ones_in_the_open_bucket():
    assert [bucket_index(v) for v in (0.2, 1.0, 1.01, 5000.0, 5000.1, 10**9)] == [0, 0, 1, 11, 12, 12]


def test_it_splits_a_window_that_spans_a_swap_by_version():
    recorder = MetricsRecorder(window_seconds=60)
    for i in range(30):
        recorder.record("resnet", "1.0.0", 3.0, now=T0 + i)
    for i in range(30, 50):  # the swap happened at T0 + 30
        recorder.record("resnet", "1.1.0", 7.0, now=T0 + i)

    windows = {w["version"]: w for w in recorder.collect(now=T0 + 61)}

    assert {v: w["inference_count"] for v, w in windows.items()} == {"1.0.0": 30, "1.1.0": 20}
    assert windows["1.0.0"]["latency_ms"]["p99"] == 3.0 and windows["1.1.0"]["latency_ms"]["p50"] == 7.0
    assert windows["1.0.0"]["window_start"] == windows["1.1.0"]["window_start"]


def test_it_rolls_windows_on_a_grid_and_skips_empty_ones():
    recorder = MetricsRecorder(window_seconds=10)
    recorder.record("m", "1.0.0", 1.0, now=T0 + 2)
    assert recorder.collect(now=T0 + 5) == []  # the window is still open
    recorder.record("m", "1.0.0", 1.0, now=T0 + 35)  # three windows later

    first, second = recorder.collect(now=T0 + 45)

    assert (first["window_start"], first["window_end"]) == ("2027-01-15T08:00:00.000Z", "2027-01-15T08:00:10.000Z")
    assert (second["window_start"], second["window_end"]) == ("2027-01-15T08:00:30.000Z", "2027-01-15T08:00:40.000Z")


def test_labels_arriving_where_their_version_served_no_call_count_in_its_next_window_with_calls():
    recorder = MetricsRecorder(window_seconds=60)
    for i in range(4):
        recorder.record("m", "1.0.0", 2.0, now=T0 + i)
    # The application labels those four calls a window later, when the device served nothing.
    for correct in (True, True, False, True):
        recorder.record_feedback("m", "1.0.0", correct, now=T0 + 70)
    assert [w["inference_count"] for w in recorder.collect(now=T0 + 125)] == [4]  # no window without calls
    recorder.record("m", "1.0.0", 2.0, now=T0 + 130)

    [window] = recorder.collect(now=T0 + 185)

    assert (window["inference_count"], window["accuracy"], window["labelled_count"]) == (1, 0.75, 1)


def test_labels_waiting_for_a_version_that_never_serves_again_go_after_an_hour():
    recorder = MetricsRecorder(window_seconds=60)
    recorder.record_feedback("m", "1.0.0", True, now=T0 + 10)
    recorder.collect(now=T0 + 61)
    recorder.record("m", "1.0.0", 2.0, now=T0 + 61 * 60)  # more than an hour later

    [window] = recorder.collect(now=T0 + 63 * 60)

    assert "accuracy" not in window and window["inference_count"] == 1


def test_it_switches_to_the_histogram_beyond_the_sample_cap():
    recorder = MetricsRecorder(window_seconds=60, max_samples=100)
    for i in range(1000):
        recorder.record("m", "1.0.0", 3.0 if i < 900 else 300.0, now=T0)

    [window] = recorder.flush(now=T0 + 1)

    assert window["inference_count"] == 1000
    assert window["latency_histogram"][bucket_index(3.0)] == 900
    p50, p95, p99 = window["latency_ms"].values()
    assert 2.0 < p50 <= 5.0  # inside the 2-5 ms bucket
    assert 200.0 < p95 <= p99 <= 300.0  # the open end of the data is the largest latency seen
    assert recorder._open == {}


def test_it_interpolates_percentiles_inside_histogram_buckets():
    histogram = [0] * HISTOGRAM_LENGTH
    histogram[3] = 100  # all in 5-10 ms

    assert percentile_from_histogram(histogram, 50, max_ms=10.0) == pytest.approx(7.5)
    assert percentile_from_histogram([0] * HISTOGRAM_LENGTH, 50, max_ms=0.0) == 0.0


def test_it_flushes_a_window_early_with_its_end_after_its_start():
    recorder = MetricsRecorder(window_seconds=60)
    recorder.record("m", "1.0.0", 1.0, now=T0)

    [window] = recorder.flush(now=T0)

    start, end = (datetime.fromisoformat(window[k]) for k in ("window_start", "window_end"))
    assert end > start
    assert recorder.flush(now=T0 + 1) == []


def test_it_caps_absurd_latencies_at_the_protocol_limit():
    recorder = MetricsRecorder()
    recorder.record("m", "1.0.0", 10**9, now=T0)

    [window] = recorder.flush(now=T0 + 1)

    assert window["latency_ms"]["p99"] == 600_000.0


def test_it_refuses_windows_the_server_would_refuse():
    with pytest.raises(ValueError, match="3600"):
        MetricsRecorder(window_seconds=7200)
