"""The check-in reads a valid window or model list in one pass (the hot path) and any other field by field.

Both readings must apply the same rules: whatever the detailed reading accepts, the one-pass reading gives
the same result for, and whatever it refuses, the one-pass reading refuses too (so the detailed one then
names the problems). Checked on windows and model lists built from valid ones with fields replaced by
hostile values.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.services import checkin
from hotswap_device.protocol import HISTOGRAM_LENGTH, MAX_COUNT, MAX_LATENCY_MS, MAX_NAME_LENGTH

# Names outside the cache below are looked up in the (empty) registry, as in a real check-in.
pytestmark = pytest.mark.django_db

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
REPORTABLE = frozenset({"detector", "classifier"})

HOSTILE = st.sampled_from([
    None, True, False, 0, -1, 1, 7, MAX_COUNT, MAX_COUNT + 1, 2**64, -(2**63) - 1, 0.5, 1.0, 1.5, -0.0,
    math.nan, math.inf, -math.inf, MAX_LATENCY_MS, MAX_LATENCY_MS + 0.001, "", "x", "y" * (MAX_NAME_LENGTH + 1),
    "detector", "unknown-model", "1.0.0", "9.9.9", "2026-12-03T11:59:00Z", "2026-12-03T12:00:00+00:00",
    "2026-12-03T12:00:00", "2026-12-03T13:00:00Z", "2026-12-03T10:59:00Z", "1999-01-01T00:00:00Z", "garbage",
    {}, [], {"p50": 1, "p95": 2, "p99": 3}, {"p50": 3, "p95": 2, "p99": 1}, {"p50": 1, "p95": 2},
    {"p50": 1, "p95": 2, "p99": 3, "p100": 4}, {"p50": True, "p95": 2, "p99": 3}, {"p50": 1, "p95": 2, "p99": math.nan},
    [0] * HISTOGRAM_LENGTH, [1] + [0] * (HISTOGRAM_LENGTH - 1), [600] + [0] * (HISTOGRAM_LENGTH - 1),
    [True] + [0] * (HISTOGRAM_LENGTH - 1), [1.0] + [0] * (HISTOGRAM_LENGTH - 1),
    [-1, 601] + [0] * (HISTOGRAM_LENGTH - 2),
    [0] * (HISTOGRAM_LENGTH - 1),
])

WINDOW_FIELDS = ["model", "version", "window_start", "window_end", "inference_count", "error_count", "latency_ms",
                 "latency_histogram", "accuracy", "labelled_count", "unknown"]


def valid_window() -> dict:
    return {"model": "detector", "version": "1.0.0", "window_start": "2026-12-03T11:58:00Z",
            "window_end": "2026-12-03T11:59:00Z", "inference_count": 600, "error_count": 3,
            "latency_ms": {"p50": 3, "p95": 5.5, "p99": 7.25},
            "latency_histogram": [0, 0, 12, 500, 80, 8] + [0] * (HISTOGRAM_LENGTH - 6),
            "accuracy": 0.9, "labelled_count": 40}


@pytest.fixture(autouse=True)
def known_versions():
    # The registry as the check-in's cache knows it: 1.0.0 of both models; 9.9.9 known missing.
    for model in REPORTABLE:
        checkin._known_versions.put(f"{model}-1.0.0", True)
        checkin._known_versions.put(f"{model}-9.9.9", time.monotonic() + 3600)
    yield
    checkin._known_versions.clear()


def detailed(item, reader, *args):
    problems = checkin._Problems()
    result = reader(item, "metrics[0]", problems, *args) if args else reader(item, problems)
    return result, problems.details


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(WINDOW_FIELDS), st.one_of(HOSTILE, st.just("delete")), max_size=4))
def test_a_window_read_in_one_pass_follows_every_rule_of_the_detailed_reading(changes):
    window = valid_window()
    for key, value in changes.items():
        if value == "delete":
            window.pop(key, None)
        else:
            window[key] = value

    fast = checkin._valid_window(window, NOW, REPORTABLE)
    slow, problems = detailed(window, checkin._window, NOW, REPORTABLE)

    if problems:
        assert fast is None, problems
    else:
        assert fast == slow


def test_the_one_pass_reading_takes_a_valid_window_and_refuses_each_kind_of_bad_one():
    assert checkin._valid_window(valid_window(), NOW, REPORTABLE) == detailed(
        valid_window(), checkin._window, NOW, REPORTABLE)[0]
    for key, bad in [("error_count", 601), ("window_end", "2026-12-03T11:57:00Z"), ("accuracy", True),
                     ("latency_histogram", [601] + [0] * (HISTOGRAM_LENGTH - 1)), ("version", "9.9.9"),
                     ("model", "unknown-model"), ("labelled_count", 601), ("window_start", "2026-12-03T11:58:00")]:
        window = valid_window() | {key: bad}
        assert checkin._valid_window(window, NOW, REPORTABLE) is None, key
        assert detailed(window, checkin._window, NOW, REPORTABLE)[1], key


def test_a_window_spanning_more_than_an_hour_is_refused_by_both_readings():
    window = valid_window() | {"window_start": (NOW - timedelta(hours=1, seconds=61)).isoformat()}
    assert checkin._valid_window(window, NOW, REPORTABLE) is None
    assert detailed(window, checkin._window, NOW, REPORTABLE)[1]


MODEL_ENTRY = st.one_of(HOSTILE, st.fixed_dictionaries(
    {"model": st.one_of(HOSTILE, st.sampled_from(["detector", "classifier"])),
     "version": st.one_of(HOSTILE, st.just("1.0.0"))},
    optional={"sha256": HOSTILE, "extra": HOSTILE}))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(MODEL_ENTRY, max_size=4))
def test_a_model_list_read_in_one_pass_follows_every_rule_of_the_detailed_reading(entries):
    fast = checkin._valid_models(entries)
    slow, problems = detailed(entries, checkin._models)

    if problems:
        assert fast is None, problems
    else:
        assert fast == slow
