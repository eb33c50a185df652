"""What a check-in tells Redis, in one round trip: its heartbeat, its rate, and its metric windows.

Heartbeats are buffered and flushed to PostgreSQL in bulk, so a check-in writes no row. Last-seen,
health and what a device runs (each model's version, written into its model slot) are soft state: if
Redis loses the buffer, the next check-in (every poll interval) restores it.

Metric windows are not soft state. They are appended to a Redis list as the check-in's one JSON
array and written to PostgreSQL in chunks by devices.services.telemetry.metric_windows_flush, which
deletes them from Redis only once they are committed (and is never counted twice, see there).
Batched, a window costs PostgreSQL a tenth of what a statement per check-in cost. The list is
bounded (METRIC_BUFFER_MAX_CHECKINS): when the flush falls behind, check-ins write their windows
straight to PostgreSQL instead, so nothing is dropped. Install reports are never buffered: they are
rare, and rollouts act on them at once.

A flush never lets one entry the database refuses hold up the others: the refused ones are set aside
(set_aside: a capped, expiring Redis list per kind, counted for /metrics) and the rest are written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import lru_cache
from typing import NamedTuple

import orjson
import redis
from django.conf import settings
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from devices.models import Device

logger = logging.getLogger(__name__)

# Set-aside entries are kept for inspection, not forever: the newest SET_ASIDE_MAX per kind, for SET_ASIDE_TTL
# after the last one. A device that keeps sending what the database refuses cannot grow Redis.
SET_ASIDE_MAX = 1000
SET_ASIDE_TTL = timedelta(days=7)
# What a write of a bad entry raises: the database refusing a value (NUL, a BC date, a constraint), psycopg
# refusing to encode one (a lone surrogate: UnicodeEncodeError, a ValueError), an entry that does not parse.
# Not an unreachable or failing database (OperationalError...): then the flush fails and the buffer waits.
REFUSED = (DataError, IntegrityError, ValueError, TypeError, KeyError, AttributeError)


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def _buffer_key() -> str:
    return f"{settings.CACHES['default']['KEY_PREFIX']}:device-heartbeats"


def metric_buffer_key() -> str:
    """The Redis list of buffered metric windows: one JSON array per check-in."""
    return f"{settings.CACHES['default']['KEY_PREFIX']}:metric-windows"


# INCR + EXPIRE for the rate window, HSET of the heartbeat and RPUSH of the windows as one command: a
# pipeline costs the hot path more client CPU (packing, parsing) than the round trips it saves. A
# throttled call buffers no windows; a full buffer none either (the caller then writes them itself).
# The answer is calls * 2 + (1 if the windows were buffered).
_RECORD_SCRIPT = """
local calls = redis.call('INCR', KEYS[1])
if calls == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if ARGV[4] == '' or calls > tonumber(ARGV[5]) or redis.call('LLEN', KEYS[3]) >= tonumber(ARGV[6]) then
    return calls * 2
end
redis.call('RPUSH', KEYS[3], ARGV[4])
return calls * 2 + 1
"""
_RECORD_SHA = hashlib.sha1(_RECORD_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1


class Recorded(NamedTuple):
    retry_after: int | None  # seconds to wait: the device is over its rate and nothing was buffered
    windows_buffered: bool


def heartbeat_record(*, device_pk: int, models: list[dict], health: dict | None, now: datetime,
                     metric_windows: str = "") -> Recorded:
    """Buffers the heartbeat (and the windows, a JSON array) and counts the call against the device's rate.

    retry_after is set when the device is over THROTTLE_DEVICE_CHECKIN. The limit is a fixed window
    counter (INCR + EXPIRE): cheap enough for the hot path, and a misbehaving device cannot crowd out
    the fleet. A later heartbeat of the same device overwrites an unflushed one; windows are appended.
    """
    count, period = _rate(settings.THROTTLE_RATES["device_checkin"])
    window = int(now.timestamp()) // period
    rate_key = f"{settings.CACHES['default']['KEY_PREFIX']}:checkin-rate:{device_pk}:{window}"
    payload = orjson.dumps({"at": now, "models": models, "health": health})
    args = (rate_key, _buffer_key(), metric_buffer_key(), period + 1, device_pk, payload, metric_windows, count,
            settings.METRIC_BUFFER_MAX_CHECKINS)
    try:
        answer = _hot_command("EVALSHA", _RECORD_SHA, 3, *args)
    except redis.exceptions.NoScriptError:  # a restarted or flushed Redis: load it once more
        answer = _hot_command("EVAL", _RECORD_SCRIPT, 3, *args)
    calls, buffered = divmod(answer, 2)
    if calls <= count:
        return Recorded(None, bool(buffered))
    return Recorded(max(1, (window + 1) * period - int(now.timestamp())), False)


_hot = threading.local()


def _hot_command(*args):
    """One command on this thread's own connection, without redis-py's per-command machinery.

    The client's pool checkout, retry wrapper and telemetry hooks cost the check-in more CPU (~40 µs)
    than the command itself; a thread's connection is used by that thread alone. A connection that
    broke (Redis restarted, an idle timeout) is replaced once, as the client's default retry would.
    """
    try:
        return _send(args)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        return _send(args)


def _send(args: tuple):
    connection = getattr(_hot, "connection", None)
    if connection is None or _hot.pid != os.getpid():  # a forked child never shares its parent's socket
        connection = redis_client().connection_pool.make_connection()
        _hot.connection, _hot.pid = connection, os.getpid()
    try:
        connection.send_command(*args)
        return connection.read_response()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        connection.disconnect()
        _hot.connection = None
        raise


@lru_cache(maxsize=8)
def _rate(rate: str) -> tuple[int, int]:
    count, _, unit = rate.partition("/")
    return int(count), {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit[0]]


def heartbeats_pending() -> dict[int, dict]:
    """Heartbeats received but not flushed yet, by device pk (for reads that must be current)."""
    return {int(pk): json.loads(raw) for pk, raw in redis_client().hgetall(_buffer_key()).items()}


def buffer_batches(key: str, *, claim: bool = True) -> Iterator[bytes]:
    """The Redis keys of a buffer's batches waiting for their flush, leftovers of a dead flush included.

    With claim, the live buffer is first renamed into a new batch, so what arrives during the flush
    lands in a fresh one; a flush that dies halfway leaves its batch for the next flush to pick up.
    """
    client = redis_client()
    if claim:
        with contextlib.suppress(redis.ResponseError):  # no such key: nothing buffered
            client.rename(key, f"{key}:flushing:{uuid.uuid4().hex}")
    return client.scan_iter(match=f"{key}:flushing:*", count=100)


def set_aside_key(kind: str) -> str:
    return f"{settings.CACHES['default']['KEY_PREFIX']}:set-aside:{kind}"


def _set_aside_counts_key() -> str:
    return f"{settings.CACHES['default']['KEY_PREFIX']}:set-aside:counts"


def set_aside(kind: str, entries: list[bytes], *, error: BaseException) -> None:
    """Keeps buffered entries the database refused out of the flush: capped, expiring, counted, logged.

    kind is "heartbeats" or "metric-windows". The count (set_aside_counts) never expires, so /metrics can
    show it as a counter; the entries themselves are only kept for someone to look at.
    """
    if not entries:
        return
    key = set_aside_key(kind)
    with redis_client().pipeline(transaction=True) as pipe:
        pipe.rpush(key, *entries)
        pipe.ltrim(key, -SET_ASIDE_MAX, -1)
        pipe.expire(key, int(SET_ASIDE_TTL.total_seconds()))
        pipe.hincrby(_set_aside_counts_key(), kind, len(entries))
        pipe.execute()
    logger.error("%d buffered %s refused by the database, set aside in Redis: %r", len(entries), kind, error,
                 extra={"key": key})


def set_aside_counts() -> dict[str, int]:
    """Entries set aside since Redis started, by kind."""
    return {kind.decode(): int(count) for kind, count in redis_client().hgetall(_set_aside_counts_key()).items()}


def heartbeats_flush() -> int:
    """Writes buffered heartbeats to the devices and their model slots in one statement; returns how many devices."""
    client = redis_client()
    flushed = 0
    for batch in buffer_batches(_buffer_key()):
        flushed += _write_heartbeats([(int(pk), raw) for pk, raw in client.hgetall(batch).items()])
        client.delete(batch)
    return flushed


def _write_heartbeats(entries: list[tuple[int, bytes]]) -> int:
    """One statement for the entries; if it is refused, each half is tried alone (bisection) down to the bad ones.

    A batch without a bad entry (every batch, in practice) costs one statement; k bad ones among n cost
    about 2k·log2(n) statements, and are set aside.
    """
    if not entries:
        return 0
    try:
        return _update_heartbeats(entries)
    except REFUSED as exc:
        if len(entries) == 1:
            pk, raw = entries[0]
            set_aside("heartbeats", [b'{"device":%d,"heartbeat":%s}' % (pk, raw)], error=exc)
            return 0
        middle = len(entries) // 2
        return _write_heartbeats(entries[:middle]) + _write_heartbeats(entries[middle:])


# The devices' last_seen and health, then what each runs, model by model, into its slot: upserted when it
# changed (a model the device runs but was never offered gets a slot with no desired state; a slot's
# reported_at is when the device began to report what it runs), and the slots of models it no longer lists
# say it runs nothing. A heartbeat older than what is stored (a late flush) moves neither
# last_seen nor a slot backwards: only the devices the first UPDATE touched go on. A model the registry
# does not know has no slot (the join drops it). A device has one heartbeat per batch (the buffer is a hash
# by device) and lists each model once (checkin_parse), so no slot is upserted twice in one statement.
# Each device carries its own models (a JSON array per heartbeat, read LATERAL): no step joins two sets of
# the batch with each other. Such a join has no index, and PostgreSQL, which guesses 100 rows for a JSON
# set, planned the old "models no longer listed" anti-join as a nested loop once the tables had statistics:
# quadratic, 32 s for a batch of 6,000 three-model devices. Now every step is linear in the batch.
_HEARTBEATS_SQL = """
    WITH seen AS (
        UPDATE devices_device AS d SET
            last_seen = b.seen,
            cpu_percent = COALESCE(b.cpu, d.cpu_percent), memory_percent = COALESCE(b.mem, d.memory_percent),
            disk_percent = COALESCE(b.disk, d.disk_percent),
            status = CASE WHEN d.status = 'offline' THEN 'active' ELSE d.status END
        FROM jsonb_to_recordset(%(devices)s::jsonb)
            AS b(pk bigint, seen timestamptz, cpu float8, mem float8, disk float8, models jsonb)
        WHERE d.id = b.pk AND (d.last_seen IS NULL OR d.last_seen <= b.seen)
        RETURNING d.id, b.seen, b.models
    ), running AS (
        SELECT s.id AS device, m.id AS ai_model, mv.id AS version, r.version AS reported,
               coalesce(r.sha256, '') AS sha256, s.seen
        FROM seen s
        CROSS JOIN LATERAL jsonb_to_recordset(s.models) AS r(model text, version text, sha256 text)
        JOIN models_app_aimodel m ON m.name = r.model
        LEFT JOIN models_app_modelversion mv ON mv.model_id = r.model || '-' || r.version
        LEFT JOIN devices_modelslot slot ON slot.device_id = s.id AND slot.ai_model_id = m.id
        -- What a slot already says is not written again (nearly every heartbeat): no row version, no lock.
        WHERE slot.id IS NULL OR (slot.running_version_id, slot.reported_version, slot.reported_sha256)
                                 IS DISTINCT FROM (mv.id, r.version, coalesce(r.sha256, ''))
    ), upserted AS (
        INSERT INTO devices_modelslot AS slot (device_id, ai_model_id, running_version_id, reported_version,
                                               reported_sha256, reported_at, remove, rollback, sequence, source,
                                               reason, traceparent, refused_reason)
        SELECT device, ai_model, version, reported, sha256, seen, false, false, 0, '', '', '', ''
        FROM running
        ON CONFLICT (device_id, ai_model_id) DO UPDATE SET
            running_version_id = EXCLUDED.running_version_id, reported_version = EXCLUDED.reported_version,
            reported_sha256 = EXCLUDED.reported_sha256, reported_at = EXCLUDED.reported_at
        WHERE slot.reported_at IS NULL OR slot.reported_at <= EXCLUDED.reported_at
    ), stopped AS (
        UPDATE devices_modelslot AS slot SET
            running_version_id = NULL, reported_version = '', reported_sha256 = '', reported_at = s.seen
        FROM seen s, models_app_aimodel m
        WHERE slot.device_id = s.id AND m.id = slot.ai_model_id
          AND (slot.reported_version <> '' OR slot.running_version_id IS NOT NULL)
          AND (slot.reported_at IS NULL OR slot.reported_at <= s.seen)
          AND NOT s.models @> jsonb_build_array(jsonb_build_object('model', m.name))
    )
    SELECT count(*) FROM seen
"""


def _update_heartbeats(raw_entries: list[tuple[int, bytes]]) -> int:
    beats = []
    for pk, raw in raw_entries:
        entry = orjson.loads(raw)
        health = entry.get("health") or {}
        # A heartbeat buffered by a version 1 server before an upgrade names one model in "running".
        models = entry["models"] if "models" in entry else [entry["running"]] if entry.get("running") else []
        beats.append({"pk": pk, "seen": entry["at"], "cpu": health.get("cpu_percent"),
                      "mem": health.get("memory_percent"), "disk": health.get("disk_percent"), "models": models})
    # A savepoint: a refused batch rolls back alone, and the flush bisects it.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_HEARTBEATS_SQL, {"devices": orjson.dumps(beats).decode()})
        return cursor.fetchone()[0]


def devices_mark_offline(*, now: datetime | None = None) -> int:
    """Active devices silent for DEVICE_OFFLINE_AFTER_SECONDS become offline (flush first, so none is missed)."""
    heartbeats_flush()
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.DEVICE_OFFLINE_AFTER_SECONDS)
    silent = Q(last_seen__lt=cutoff) | Q(last_seen__isnull=True, registered_at__lt=cutoff)
    return Device.objects.filter(silent, status=Device.Status.ACTIVE).update(status=Device.Status.OFFLINE)
