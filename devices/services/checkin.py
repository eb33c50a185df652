"""The check-in: validate what a device says, store its reports, answer with its desired state."""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple

import orjson
import psycopg
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.db.models.signals import post_delete, post_save

from devices import heartbeats, manifests
from devices.models import Device, InstallReport
from hotswap.exceptions import ApplicationError
from hotswap.lib.tracing import valid_traceparent
from hotswap.lib.untrusted import json_parse, unstorable
from hotswap.settings.env import env
from hotswap_device.protocol import (
    ACTION_INSTALL,
    ACTION_REMOVE,
    CHECKIN_FIELDS,
    CLOCK_SKEW,
    HISTOGRAM_LENGTH,
    MAX_COUNT,
    MAX_ITEMS,
    MAX_LATENCY_MS,
    MAX_MODELS,
    MAX_NAME_LENGTH,
    MAX_REPORT_AGE,
    MAX_WINDOW,
    MODEL_FIELDS,
    PROTOCOL_VERSION,
    PROTOCOL_VERSION_UNSUPPORTED,
    V1_RUNNING_FIELD,
)
from models_app.models import ModelVersion
from models_app.shipping import status_ships
from models_app.storage import artifact_store

# How long a version found missing is believed missing (per process): a device naming one gets 400s
# without a query per item, and a version uploaded meanwhile is found within this.
UNKNOWN_VERSION_SECONDS = 10.0
INSTALL_STATUSES = set(InstallReport.Status.values)
_CHECKIN_KEYS = frozenset(CHECKIN_FIELDS)
_MODEL_KEYS = frozenset(MODEL_FIELDS)


class CheckinSlot(NamedTuple):
    """One model slot of the calling device, as the check-in needs it (its desired state, if any)."""

    model: str
    sequence: int
    version_id: int | None
    remove: bool
    rollback: bool
    traceparent: str
    version_status: str

    @property
    def ships(self) -> bool:
        """Whether the answer carries a manifest for it: a removal, or a version that may still be shipped.

        A version found corrupt after it was desired is withheld: the device keeps what it runs.
        """
        return self.remove or (self.version_id is not None and status_ships(self.version_status))


class CheckinDevice(NamedTuple):
    """What the hot path needs of the calling device and its slots: one row, no model instances."""

    pk: int
    device_id: str
    status: str
    key_hash: str
    slots: tuple[CheckinSlot, ...]  # the most recently set first

    @property
    def models(self) -> frozenset[str]:
        return frozenset(slot.model for slot in self.slots)

    @property
    def traceparent(self) -> str:
        """The trace of the latest change of a desired state the answer carries, handed to the device."""
        return next((slot.traceparent for slot in self.slots if slot.ships and slot.traceparent), "")


# One indexed read per check-in: the device and every slot, aggregated into one row (an index probe of
# one_slot_per_device_model per device). Raw SQL: building the equivalent ORM join costs ~2 ms of CPU per
# call, most of a check-in's budget on a 2-core server. Decommissioning revokes every credential, yet
# the device must hear 403 DEVICE_DECOMMISSIONED (PROTOCOL §2: stop, do not re-enroll): a revoked
# credential still identifies a decommissioned device, whose status the view then refuses.
_IDENTITY_SQL = """
    SELECT d.id, d.device_id, d.status, c.key_hash, s.slots
    FROM devices_devicecredential c
    JOIN devices_device d ON d.id = c.device_id
    LEFT JOIN LATERAL (
        SELECT json_agg(json_build_array(m.name, s.sequence, s.version_id, s.remove, s.rollback, s.traceparent,
                                         coalesce(v.status, ''))
                        ORDER BY s.set_at DESC NULLS LAST, m.name) AS slots
        FROM devices_modelslot s
        JOIN models_app_aimodel m ON m.id = s.ai_model_id
        LEFT JOIN models_app_modelversion v ON v.id = s.version_id
        WHERE s.device_id = d.id
    ) s ON true
    WHERE c.prefix = %s AND (c.revoked_at IS NULL OR d.status = 'decommissioned')
"""


class _PreparedCursor(psycopg.Cursor):
    """Server-side binding, prepared once per connection: later executions skip PostgreSQL's parse and plan.

    psycopg honours prepare=True only on a connection whose prepare_threshold is not None (settings/base.py).
    """

    def execute(self, query, params=None, **kwargs):
        return super().execute(query, params, prepare=True, **kwargs)


def _cursor():
    """A server-binding cursor on Django's connection, with Django's error mapping and query log.

    Its statements are prepared unless CHECKIN_PREPARED_STATEMENTS=false (a connection pooler that cannot
    keep prepared statements). It is kept on the connection (Django's are per thread) and used again by
    the next check-in: making a psycopg cursor and its adapters costs more CPU than the query it runs.
    Callers execute and fetch without closing it; a new connection gets a new cursor.
    """
    connection.ensure_connection()
    prepared = _prepared_statements()
    kept = getattr(connection, "_checkin_cursor", None)
    if kept is None or kept[0] is not connection.connection or kept[1] is not prepared:
        raw = (_PreparedCursor if prepared else psycopg.Cursor)(connection.connection)
        kept = connection._checkin_cursor = (connection.connection, prepared, raw)
    raw = kept[2]
    return connection.make_debug_cursor(raw) if connection.queries_logged else connection.make_cursor(raw)


def checkin_device(*, prefix: str) -> CheckinDevice | None:
    # Other apps change the rows it reads with raw SQL: the plan is kept, never the rows.
    for attempt in (1, 2):
        # No CONN_HEALTH_CHECKS probe here: its SELECT 1 is a round trip as costly as this query. A
        # connection that died while idle fails the query instead, and the read is retried on a new one.
        connection.health_check_done = True
        try:
            cursor = _cursor()
            cursor.execute(_IDENTITY_SQL, [prefix])
            row = cursor.fetchone()
            break
        except (OperationalError, InterfaceError):
            if attempt == 2 or connection.in_atomic_block:
                raise
            connection.close()
    if row is None:
        return None
    return CheckinDevice(*row[:4], tuple(CheckinSlot(*slot) for slot in row[4] or ()))


_PREPARED_DEFAULT = env.bool("CHECKIN_PREPARED_STATEMENTS", default=True)


def _prepared_statements() -> bool:
    return getattr(settings, "CHECKIN_PREPARED_STATEMENTS", _PREPARED_DEFAULT)


class ManifestVersion(NamedTuple):
    """The immutable facts of a model version a manifest is made of."""

    model: str
    version: str
    sha256: str
    size: int
    storage_key: str
    detected_format: str
    model_id: str


@lru_cache(maxsize=4096)
def _manifest_version(version_id: int) -> ManifestVersion:
    # Cached per process: these fields never change, and a desired version cannot be deleted.
    version = ModelVersion.objects.select_related("ai_model").get(pk=version_id)
    return ManifestVersion(version.ai_model.name, version.version, version.sha256, version.size_bytes,
                           version.storage_key, version.detected_format, version.model_id)


@dataclass
class CheckinReport:
    """A validated check-in body."""

    models: list[dict]  # every model the device runs now: {model, version, sha256}
    health: dict | None
    installs: list[dict]
    metrics: list[dict]


class CheckinInvalid(ApplicationError):
    """The check-in body is not acceptable; every problem is listed in details and nothing was stored."""

    code = "VALIDATION_ERROR"


class ProtocolVersionUnsupported(ApplicationError):
    """The body is in another protocol version's shape: nothing of it is read, nothing stored."""

    code = PROTOCOL_VERSION_UNSUPPORTED


def checkin_parse(body: bytes, *, now: datetime, slot_models: frozenset[str] = frozenset()) -> CheckinReport:
    """Parses and validates a v2 check-in body (devices/PROTOCOL.md §3), all or nothing.

    slot_models are the models the device has a slot for: a report must name one of them or a model the
    body says the device runs. NaN and Infinity parse as numbers so the number checks name the item that
    holds one: the agent drops exactly the items named and resends the rest. Text that cannot be stored,
    and nesting too deep, are refused while parsing (hotswap/lib/untrusted.py).
    """
    data = json_parse(body or b"{}", allow_nan=True, bounded_integers=True)  # every integer is bounded below
    problems = _Problems()
    if not isinstance(data, dict):
        problems.add("", "The body must be a JSON object.")
        problems.raise_if_any()
    _protocol(data)
    if not data.keys() <= _CHECKIN_KEYS:
        problems.unknown_keys("", data, _CHECKIN_KEYS)
    models = _models(data.get("models"), problems)
    health = _health(data.get("health"), problems)
    reportable = slot_models | {entry["model"] for entry in models}
    installs = [_install(item, f"installs[{i}]", problems, now, reportable)
                for i, item in enumerate(_items(data, "installs", problems))]
    # A valid window (nearly every one) is read in one pass; any other is read again by _window, which names
    # each of its problems. Both apply the same rules, and tests hold them to it.
    metrics = [_valid_window(item, now, reportable) or _window(item, f"metrics[{i}]", problems, now, reportable)
               for i, item in enumerate(_items(data, "metrics", problems))]
    problems.raise_if_any()
    return CheckinReport(models=models, health=health, installs=installs, metrics=metrics)


def _protocol(data: dict) -> None:
    """Refuses a body of another protocol version before reading any of it: no silent misreading."""
    version = data.get("protocol")
    if type(version) is int and version == PROTOCOL_VERSION and V1_RUNNING_FIELD not in data:
        return
    if "protocol" not in data:
        said = "This body has no `protocol` field (a version 1 body)"
    elif type(version) is not int:
        said = "Its `protocol` must be the whole number 2"
    elif version != PROTOCOL_VERSION:
        said = f"This body says protocol {version}"
    else:
        said = "This body has version 1's `running` field; version 2 lists every running model in `models`"
    message = (f"This server speaks device protocol {PROTOCOL_VERSION} only. {said}: update the device agent "
               f"(devices/PROTOCOL.md). Nothing was stored.")
    raise ProtocolVersionUnsupported(message, details=[{"field": "protocol", "message": message}])


class _Problems:
    def __init__(self) -> None:
        self.details: list[dict[str, str]] = []

    def add(self, field: str, message: str) -> None:
        self.details.append({"field": field, "message": message})

    def unknown_keys(self, where: str, data: dict, allowed: set[str]) -> None:
        for key in sorted(set(data) - allowed):
            self.add(f"{where}.{key}" if where else key, "Unknown field.")

    def raise_if_any(self) -> None:
        if self.details:
            summary = "; ".join(f"{d['field'] or 'body'}: {d['message']}" for d in self.details[:5])
            more = f" (and {len(self.details) - 5} more)" if len(self.details) > 5 else ""
            raise CheckinInvalid(f"The check-in was rejected and nothing was stored: {summary}{more}",
                                 details=self.details)


def _items(data: dict, key: str, problems: _Problems) -> list:
    value = data.get(key, [])
    if not isinstance(value, list):
        problems.add(key, "Must be a list.")
        return []
    if len(value) > MAX_ITEMS:
        problems.add(key, f"At most {MAX_ITEMS} per check-in; send the rest with the next one.")
        return []
    return value


def _string(value: Any, field: str, problems: _Problems, *, max_length: int = MAX_NAME_LENGTH,
            required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value) or len(value) > max_length:
        problems.add(field, f"Must be a {'non-empty ' if required else ''}string of at most {max_length} characters.")
        return ""
    return value


def _number(value: Any, field: str, problems: _Problems, *, low: float, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problems.add(field, "Must be a finite number.")
        return None
    if not low <= value <= high:
        problems.add(field, f"Must be between {low:g} and {high:g}.")
        return None
    return float(value)


def _count(value: Any, field: str, problems: _Problems) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        problems.add(field, f"Must be a whole number from 0 to {MAX_COUNT}.")
        return None
    return value


def _time(value: Any, field: str, problems: _Problems, now: datetime) -> datetime | None:
    parsed = _moment(value, now)
    if isinstance(parsed, str):
        problems.add(field, parsed)
        return None
    return parsed


def _moment(value: Any, now: datetime) -> datetime | str:
    """The time a device sent, or what is wrong with it.

    Every time lies within [now - MAX_REPORT_AGE, now + CLOCK_SKEW]: a report older than raw windows are
    useful for is not worth storing, and an unbounded one (year 1 at +14:00) would be stored as a BC
    timestamp that PostgreSQL accepts but Python cannot read back (a 500 for every page listing it).
    """
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        return "Must be an ISO 8601 time with a timezone, e.g. 2026-01-01T12:00:00Z."
    if parsed > now + CLOCK_SKEW:
        return f"Is in the future (more than {CLOCK_SKEW.seconds} s after the server's time)."
    if parsed < now - MAX_REPORT_AGE:
        return f"Is older than {MAX_REPORT_AGE.days} days."
    return parsed


def _known_version(report: dict, where: str, problems: _Problems) -> None:
    """A report must name a version of the registry: one a device was never offered is not stored.

    Answered from a per-process cache of the versions seen (a dict lookup on the hot path); a miss costs
    one indexed query. Versions are never renamed; a deleted one only stays "known" in this cache, and its
    reports are then stored unlinked, as before.
    """
    model, version = report["model"], report["version"]
    if model and version and not _version_known(model, version):  # an empty one is already reported
        problems.add(f"{where}.version", f"The registry has no version {version} of model {model}.")


def _version_known(model: str, version: str) -> bool:
    model_id = f"{model}-{version}"
    known = _known_versions.get(model_id)
    if known is None or (known is not True and known < time.monotonic()):
        # What PostgreSQL cannot store cannot name a stored version, and would fail the lookup itself.
        known = not unstorable(model_id) and ModelVersion.objects.filter(model_id=model_id).exists()
        _known_versions.put(model_id, True if known else time.monotonic() + UNKNOWN_VERSION_SECONDS)
    return known is True


def _forget_version(sender, instance: ModelVersion, **kwargs) -> None:
    _known_versions.pop(instance.model_id)


post_save.connect(_forget_version, sender=ModelVersion, dispatch_uid="checkin-known-versions-save")
post_delete.connect(_forget_version, sender=ModelVersion, dispatch_uid="checkin-known-versions-delete")


def _models(value: Any, problems: _Problems) -> list[dict]:
    """The models the device runs: each at most once, at most MAX_MODELS."""
    if not isinstance(value, list):
        problems.add("models", "Required: a list of every model the device runs now, [] for none.")
        return []
    if len(value) > MAX_MODELS:
        problems.add("models", f"A device runs at most {MAX_MODELS} models; this check-in lists {len(value)}.")
        return []
    if (valid := _valid_models(value)) is not None:
        return valid
    models: list[dict] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        where = f"models[{i}]"
        if not isinstance(item, dict):
            problems.add(where, "Must be an object {model, version, sha256}.")
            continue
        problems.unknown_keys(where, item, _MODEL_KEYS)
        entry = {"model": _string(item.get("model"), f"{where}.model", problems),
                 "version": _string(item.get("version"), f"{where}.version", problems),
                 "sha256": _string(item.get("sha256"), f"{where}.sha256", problems, required=False)}
        if entry["model"] in seen:
            problems.add(f"{where}.model", f"Model {entry['model']} is listed twice; a device runs one version "
                                           f"of a model at a time.")
        elif entry["model"]:
            seen.add(entry["model"])
            models.append(entry)
    return models


def _is_name(value: Any) -> bool:
    """What _string accepts as a required name, as one test for the one-pass readings."""
    return type(value) is str and 0 < len(value) <= MAX_NAME_LENGTH


def _valid_models(value: list) -> list[dict] | None:
    """The list when every entry is valid by the rules of _models, read in one pass (the hot path); else None."""
    models = []
    for item in value:
        if type(item) is not dict or not item.keys() <= _MODEL_KEYS:
            return None
        model, version, sha256 = item.get("model"), item.get("version"), item.get("sha256")
        if (not _is_name(model) or not _is_name(version)
                or (sha256 is not None and (type(sha256) is not str or len(sha256) > MAX_NAME_LENGTH))):
            return None
        models.append({"model": model, "version": version, "sha256": sha256 or ""})
    return models if len({entry["model"] for entry in models}) == len(models) else None


def _reportable(report: dict, where: str, problems: _Problems, reportable: frozenset[str]) -> None:
    """A report belongs to one of the device's slots, or to a model the device says it runs."""
    model = report.get("model")
    if model and model not in reportable:
        problems.add(f"{where}.model", f"This device was never offered model {model} and does not list it in "
                                       f"`models`: a report must be about a model it has or runs.")


def _health(value: Any, problems: _Problems) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.add("health", "Must be an object.")
        return None
    problems.unknown_keys("health", value, {"cpu_percent", "memory_percent", "disk_percent"})
    return {key: _number(value[key], f"health.{key}", problems, low=0, high=100) for key in value
            if key in ("cpu_percent", "memory_percent", "disk_percent")}


def _install(item: Any, where: str, problems: _Problems, now: datetime, reportable: frozenset[str]) -> dict:
    if not isinstance(item, dict):
        problems.add(where, "Must be an object.")
        return {}
    problems.unknown_keys(where, item, {"model", "version", "status", "sequence", "duration_ms", "at", "error",
                                        "traceparent"})
    report = {
        "model": _string(item.get("model"), f"{where}.model", problems),
        "version": _string(item.get("version"), f"{where}.version", problems),
        "status": item.get("status"),
        "error": _string(item.get("error"), f"{where}.error", problems, max_length=2000, required=False),
        "sequence": _count(item["sequence"], f"{where}.sequence", problems) if item.get("sequence") is not None
        else None,
        "duration_ms": _count(item["duration_ms"], f"{where}.duration_ms", problems)
        if item.get("duration_ms") is not None else None,
        "at": _time(item.get("at"), f"{where}.at", problems, now) if "at" in item else now,
        "traceparent": valid_traceparent(item.get("traceparent")),
    }
    if report["status"] not in INSTALL_STATUSES:
        problems.add(f"{where}.status", f"Must be one of {', '.join(sorted(INSTALL_STATUSES))}.")
    _reportable(report, where, problems, reportable)
    _known_version(report, where, problems)
    return report


_WINDOW_KEYS = frozenset({"model", "version", "window_start", "window_end", "inference_count", "error_count",
                          "latency_ms", "latency_histogram", "accuracy", "labelled_count"})
_LATENCY_KEYS = frozenset({"p50", "p95", "p99"})
_NUMBER = (int, float)  # what _number accepts (bool is its own type: excluded)
_INTEGERS = {int}


def _valid_window(item: Any, now: datetime, reportable: frozenset[str]) -> dict | None:
    """The window when it is valid by every rule of _window, read in one pass; None for any other.

    The check-in's hot path: a window costs a few microseconds instead of a call per field. NaN and the
    infinities fail the range comparisons, bool fails the exact type checks, as in _window.
    """
    if type(item) is not dict or not item.keys() <= _WINDOW_KEYS:
        return None
    model, version, count, errors = item.get("model"), item.get("version"), item.get("inference_count"), \
        item.get("error_count")
    if (not _is_name(model) or not _is_name(version) or model not in reportable
            or type(count) is not int or type(errors) is not int or not 0 <= errors <= count <= MAX_COUNT):
        return None
    start, end = _moment(item.get("window_start"), now), _moment(item.get("window_end"), now)
    if type(start) is not datetime or type(end) is not datetime or not start < end <= start + MAX_WINDOW:
        return None
    latency = item.get("latency_ms")
    if type(latency) is not dict or latency.keys() != _LATENCY_KEYS:
        return None
    p50, p95, p99 = latency["p50"], latency["p95"], latency["p99"]
    if (type(p50) not in _NUMBER or type(p95) not in _NUMBER or type(p99) not in _NUMBER
            or not 0 <= p50 <= p95 <= p99 <= MAX_LATENCY_MS):
        return None
    histogram = item.get("latency_histogram")
    if histogram is not None and (type(histogram) is not list or len(histogram) != HISTOGRAM_LENGTH
                                  or set(map(type, histogram)) != _INTEGERS or min(histogram) < 0
                                  or max(histogram) > MAX_COUNT or sum(histogram) != count):
        return None
    accuracy, labelled = item.get("accuracy"), item.get("labelled_count")
    if ((accuracy is not None and (type(accuracy) not in _NUMBER or not 0 <= accuracy <= 1))
            or (labelled is not None and (type(labelled) is not int or not 0 <= labelled <= count))
            or not _version_known(model, version)):
        return None
    return {"model": model, "version": version, "window_start": start, "window_end": end,
            "inference_count": count, "error_count": errors,
            "accuracy": None if accuracy is None else float(accuracy), "labelled_count": labelled,
            "latency_histogram": histogram, "latency_p50_ms": float(p50), "latency_p95_ms": float(p95),
            "latency_p99_ms": float(p99)}


def _window(item: Any, where: str, problems: _Problems, now: datetime, reportable: frozenset[str]) -> dict:
    if not isinstance(item, dict):
        problems.add(where, "Must be an object.")
        return {}
    problems.unknown_keys(where, item, _WINDOW_KEYS)
    window = {
        "model": _string(item.get("model"), f"{where}.model", problems),
        "version": _string(item.get("version"), f"{where}.version", problems),
        "window_start": _time(item.get("window_start"), f"{where}.window_start", problems, now),
        "window_end": _time(item.get("window_end"), f"{where}.window_end", problems, now),
        "inference_count": _count(item.get("inference_count"), f"{where}.inference_count", problems),
        "error_count": _count(item.get("error_count"), f"{where}.error_count", problems),
        "accuracy": None, "labelled_count": None, "latency_histogram": None,
    }
    start, end, count = window["window_start"], window["window_end"], window["inference_count"]
    if start and end:
        if end <= start:
            problems.add(f"{where}.window_end", "Must be after window_start.")
        elif end - start > MAX_WINDOW:
            problems.add(f"{where}.window_end", "A window may span at most one hour.")
    if count is not None and window["error_count"] is not None and window["error_count"] > count:
        problems.add(f"{where}.error_count", "Cannot exceed inference_count.")
    latency = item.get("latency_ms")
    if not isinstance(latency, dict) or set(latency) != {"p50", "p95", "p99"}:
        problems.add(f"{where}.latency_ms", "Must be an object with exactly p50, p95 and p99 (milliseconds).")
    else:
        values = [_number(latency[p], f"{where}.latency_ms.{p}", problems, low=0, high=MAX_LATENCY_MS)
                  for p in ("p50", "p95", "p99")]
        if None not in values and not values[0] <= values[1] <= values[2]:
            problems.add(f"{where}.latency_ms", "Percentiles must satisfy p50 <= p95 <= p99.")
        window.update(latency_p50_ms=values[0], latency_p95_ms=values[1], latency_p99_ms=values[2])
    histogram = item.get("latency_histogram")
    if histogram is not None:
        if (not isinstance(histogram, list) or len(histogram) != HISTOGRAM_LENGTH
                or any(_count(c, f"{where}.latency_histogram", problems) is None for c in histogram)):
            problems.add(f"{where}.latency_histogram", f"Must be {HISTOGRAM_LENGTH} whole counts.")
        elif count is not None and sum(histogram) != count:
            problems.add(f"{where}.latency_histogram", "Counts must add up to inference_count.")
        else:
            window["latency_histogram"] = histogram
    if item.get("accuracy") is not None:
        window["accuracy"] = _number(item["accuracy"], f"{where}.accuracy", problems, low=0, high=1)
    if item.get("labelled_count") is not None:
        labelled = _count(item["labelled_count"], f"{where}.labelled_count", problems)
        if labelled is not None and count is not None and labelled > count:
            problems.add(f"{where}.labelled_count", "Cannot exceed inference_count.")
        window["labelled_count"] = labelled
    _reportable(window, where, problems, reportable)
    _known_version(window, where, problems)
    return window


# One statement for every batch of reports, whatever their number: the rows travel as one JSON
# parameter each (cheaper to build and send than a parameter per value), so the text never changes
# and PostgreSQL plans it once per connection (prepared, like the identity read: planning a statement
# per shape cost more CPU than the insert). A single statement is its own transaction, so installs and
# windows are stored all or nothing in one round trip. Each window names its device: the flush writes
# the windows of many check-ins at once, and skips those of a device deleted meanwhile (its windows
# would have been deleted with it). The version is resolved by model_id inside it; WITH ORDINALITY ...
# ORDER BY keeps ids in the order they were sent. A report is stored once: ON CONFLICT DO NOTHING on
# its identity (the unique constraints install_report_once and metric_window_once) drops a resend, or
# a copy in the same batch, at the cost of the index probe the constraint makes anyway. Install reports
# are attributed to their model's slot of the reporting device (the last per model counts): a refusal or
# failure of the slot's current sequence is kept on it (refused_sequence, refused_reason) until the device
# reports that sequence active; `removed` clears what the slot runs (unless a later heartbeat says otherwise).
_REPORTS_SQL = """
    WITH installs AS (
        INSERT INTO devices_installreport (device_id, version_id, model_name, model_version, status, error, sequence,
                                           duration_ms, reported_at, received_at, traceparent)
        SELECT %(device)s, mv.id, v.model, v.version, v.status, v.error, v.sequence, v.duration_ms, v.at, now(),
               v.traceparent
        FROM ROWS FROM (jsonb_to_recordset(%(installs)s::jsonb) AS (
                 model text, version text, status text, error text, sequence bigint, duration_ms integer,
                 at timestamptz, traceparent text)) WITH ORDINALITY AS v
        LEFT JOIN models_app_modelversion mv ON mv.model_id = v.model || '-' || v.version
        ORDER BY v.ordinality
        ON CONFLICT DO NOTHING
    ), slot_news AS (
        SELECT DISTINCT ON (v.model) v.model, v.status, v.error, v.sequence, v.at
        FROM ROWS FROM (jsonb_to_recordset(%(installs)s::jsonb) AS (
                 model text, status text, error text, sequence bigint, at timestamptz)) WITH ORDINALITY AS v
        WHERE v.status IN ('refused', 'failed', 'active', 'removed')
        ORDER BY v.model, v.ordinality DESC
    ), slots AS (
        UPDATE devices_modelslot s SET
            refused_sequence = CASE WHEN n.status = 'removed' THEN s.refused_sequence
                                    WHEN n.status = 'active' THEN NULL ELSE n.sequence END,
            refused_reason = CASE WHEN n.status = 'removed' THEN s.refused_reason
                                  WHEN n.status = 'active' THEN '' ELSE left(coalesce(n.error, ''), 2000) END,
            running_version_id = CASE WHEN n.status = 'removed' THEN NULL ELSE s.running_version_id END,
            reported_version = CASE WHEN n.status = 'removed' THEN '' ELSE s.reported_version END,
            reported_sha256 = CASE WHEN n.status = 'removed' THEN '' ELSE s.reported_sha256 END,
            reported_at = CASE WHEN n.status = 'removed' THEN least(n.at, now()) ELSE s.reported_at END
        FROM slot_news n JOIN models_app_aimodel m ON m.name = n.model
        WHERE s.device_id = %(device)s AND s.ai_model_id = m.id
          AND CASE WHEN n.status = 'removed' THEN s.reported_at IS NULL OR s.reported_at <= n.at
                   ELSE n.sequence = s.sequence END
    ), windows AS (
        INSERT INTO devices_metricwindow (device_id, version_id, model_name, model_version, window_start,
                                          window_end, inference_count, error_count, latency_p50_ms,
                                          latency_p95_ms, latency_p99_ms, latency_histogram, accuracy,
                                          labelled_count, received_at)
        SELECT v.device, mv.id, v.model, v.version, v.window_start, v.window_end, v.inference_count,
               v.error_count, v.latency_p50_ms, v.latency_p95_ms, v.latency_p99_ms, v.latency_histogram,
               v.accuracy, v.labelled_count, now()
        FROM ROWS FROM (jsonb_to_recordset(%(windows)s::jsonb) AS (
                 device bigint, model text, version text, window_start timestamptz, window_end timestamptz,
                 inference_count integer, error_count integer, latency_p50_ms float8, latency_p95_ms float8,
                 latency_p99_ms float8, latency_histogram integer[], accuracy float8, labelled_count integer))
             WITH ORDINALITY AS v
        JOIN devices_device d ON d.id = v.device
        LEFT JOIN models_app_modelversion mv ON mv.model_id = v.model || '-' || v.version
        ORDER BY v.ordinality
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    -- With 'off', the commit returns before its WAL is flushed: only a PostgreSQL crash in the next
    -- ~0.6 s could lose these rows (never corrupt anything), and a check-in carrying reports costs a
    -- fraction of a disk flush. TELEMETRY_SYNCHRONOUS_COMMIT=true keeps 'on'. Read at this
    -- statement's commit; the inserts above run whether or not their rows are read.
    SELECT (SELECT count(*) FROM windows), set_config('synchronous_commit', %(synchronous_commit)s, true)
"""


def reports_json(reports: list[dict]) -> str:
    """Validated reports as one JSON array (datetimes in RFC 3339; every number is finite, validated)."""
    return orjson.dumps(reports).decode()


def reports_insert(*, device_pk: int | None, installs: str = "[]", windows: str = "[]",
                   synchronous: bool | None = None) -> int:
    """Stores install reports (of device_pk) and metric windows (each naming its device), given as JSON arrays.

    One prepared statement, all or nothing, one round trip; returns how many windows were stored.
    """
    synchronous = settings.TELEMETRY_SYNCHRONOUS_COMMIT if synchronous is None else synchronous
    params = {"device": device_pk, "installs": installs, "windows": windows,
              "synchronous_commit": "on" if synchronous else "off"}
    cursor = _cursor()
    cursor.execute(_REPORTS_SQL, params)
    return cursor.fetchone()[0]


def checkin_record(*, device: CheckinDevice, report: CheckinReport, now: datetime) -> int | None:
    """Records the heartbeat and stores the reports; returns seconds to wait when the device checks in too often.

    A throttled check-in stores nothing. Metric windows alone (nearly every check-in that carries any)
    ride the heartbeat's Redis call into the buffer the flush writes from (devices/heartbeats.py). A
    check-in that also reports installs, or finds the buffer full, writes everything in one statement.
    """
    windows = [{**window, "device": device.pk} for window in report.metrics]
    buffer = reports_json(windows) if windows and not report.installs else ""
    recorded = heartbeats.heartbeat_record(device_pk=device.pk, models=report.models, health=report.health,
                                           now=now, metric_windows=buffer)
    if recorded.retry_after is not None:
        return recorded.retry_after
    if device.status == Device.Status.OFFLINE:
        # Rare transition, so it is written at once rather than waiting for the flush.
        Device.objects.filter(pk=device.pk, status=Device.Status.OFFLINE).update(status=Device.Status.ACTIVE)
    if report.installs or (windows and not recorded.windows_buffered):
        reports_insert(device_pk=device.pk, installs=reports_json(report.installs),
                       windows=buffer or reports_json(windows))
    return None


def _url_period() -> int:
    return max(settings.MANIFEST_TTL_SECONDS // 2, 1)


def checkin_etag(device: CheckinDevice, *, now: datetime) -> str:
    """One tag over the device's whole desired set, so an idle device gets one 304 whatever its number of slots.

    It changes with any slot's desired state (model, sequence, version, action, rollback, whether it ships),
    and once per half manifest lifetime so a 304 never hides an expired URL or manifest.
    """
    shipped = sorted((slot.model, slot.sequence, slot.version_id, slot.remove, slot.rollback)
                     for slot in device.slots if slot.ships)
    if not shipped:
        return '"none"'
    digest = hashlib.blake2b(repr(shipped).encode(), digest_size=8).hexdigest()
    return f'"{digest}-{int(now.timestamp()) // _url_period()}"'


class _Lru:
    """A small thread-safe LRU map (gthread workers answer from several threads)."""

    def __init__(self, size: int):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        with self.lock:
            self.items[key] = value
            if len(self.items) > self.size:
                self.items.popitem(last=False)

    def pop(self, key) -> None:
        with self.lock:
            self.items.pop(key, None)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


# Presigning is the dearest part of an answer, and a link depends only on the artifact and the URL
# period, so every device of a rollout shares one. Signed manifests are kept per device slot and state:
# every input of one is in its key (issued_at stays the first issue's time, which it is).
_links = _Lru(1024)
_manifests = _Lru(8192)
# model_id -> True (in the registry) or until when (time.monotonic()) it is believed missing.
_known_versions = _Lru(4096)


def _download_url(version: ManifestVersion, expires_at: datetime, now: datetime) -> str:
    filename = f"{version.model_id}.{'onnx' if version.detected_format == 'onnx' else 'bin'}"
    key = (version.storage_key, filename, expires_at)
    url = _links.get(key)
    if url is None:
        url = artifact_store().download_link(version.storage_key, filename=filename,
                                             expires_in=int((expires_at - now).total_seconds())).url
        _links.put(key, url)
    return url


def checkin_desired(*, device: CheckinDevice, now: datetime, request=None) -> list[dict]:
    """The answer's `desired` list: one signed manifest per slot with a desired state, by model name.

    A slot's manifest is cached by every input of it (issued_at stays the first issue's time, which it is):
    an unchanged slot costs a dict lookup when another slot of the device changes.
    """
    period = _url_period()
    expires_at = datetime.fromtimestamp((int(now.timestamp()) // period + 2) * period, tz=now.tzinfo)
    desired = []
    for slot in sorted(device.slots, key=lambda slot: slot.model):
        if slot.ships:
            desired.append(_slot_manifest(device, slot, now=now, expires_at=expires_at, request=request))
    return desired


def _slot_manifest(device: CheckinDevice, slot: CheckinSlot, *, now: datetime, expires_at: datetime,
                   request) -> dict:
    if slot.remove:
        return _signed((device.pk, slot.model, slot.sequence, ACTION_REMOVE, expires_at), lambda: {
            "action": ACTION_REMOVE, "device_id": device.device_id, "model": slot.model,
            "issued_at": _iso(now), "expires_at": _iso(expires_at), "sequence": slot.sequence,
        })
    version = _manifest_version(slot.version_id)
    url = _download_url(version, expires_at, now)
    if request is not None and url.startswith("/"):
        url = request.build_absolute_uri(url)  # local storage links are paths on the host the device called
    return _signed((device.pk, slot.model, slot.sequence, slot.version_id, slot.rollback, url), lambda: {
        "action": ACTION_INSTALL, "device_id": device.device_id, "model": version.model,
        "version": version.version, "sha256": version.sha256, "size": version.size, "url": url,
        "format": version.detected_format, "issued_at": _iso(now), "expires_at": _iso(expires_at),
        "rollback": slot.rollback, "sequence": slot.sequence,
    })


def _signed(key: tuple, manifest: Callable[[], dict]) -> dict:
    """The signed manifest cached under key, signed and cached now when it is not there."""
    signed = _manifests.get(key)
    if signed is None:
        signed = manifests.sign(manifest())
        _manifests.put(key, signed)
    return signed


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
