"""Heartbeats are buffered in Redis and flushed to PostgreSQL in bulk, so a check-in writes no row.

Last-seen, health and what a device runs are soft state: if Redis loses the buffer, the next
check-in (every poll interval) restores it. Reports (installs, metric windows) are not buffered:
they go straight to PostgreSQL, because losing them would be losing telemetry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import uuid
from datetime import datetime, timedelta
from functools import lru_cache

import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from devices.models import Device
from models_app.models import ModelVersion


@lru_cache(maxsize=1)
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def _buffer_key() -> str:
    return f"{settings.CACHES['default']['KEY_PREFIX']}:device-heartbeats"


# INCR + EXPIRE for the rate window and HSET of the heartbeat as one command: a pipeline of three
# costs the hot path more client CPU (packing, parsing) than the round trip it saves.
_RECORD_SCRIPT = """
local calls = redis.call('INCR', KEYS[1])
if calls == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return calls
"""
_RECORD_SHA = hashlib.sha1(_RECORD_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1


def heartbeat_record(*, device_pk: int, running: dict | None, health: dict | None, now: datetime) -> int | None:
    """Buffers the heartbeat and counts the call against the device's rate, in one Redis round trip.

    Returns the seconds to wait when the device is over THROTTLE_DEVICE_CHECKIN, else None. The
    limit is a fixed window counter (INCR + EXPIRE): cheap enough for the hot path, and a
    misbehaving device cannot crowd out the fleet. A later heartbeat of the same device overwrites
    an unflushed one.
    """
    count, period = _rate(settings.THROTTLE_RATES["device_checkin"])
    window = int(now.timestamp()) // period
    rate_key = f"{settings.CACHES['default']['KEY_PREFIX']}:checkin-rate:{device_pk}:{window}"
    payload = json.dumps({"at": now.isoformat(), "running": running, "health": health}, separators=(",", ":"))
    args = (rate_key, _buffer_key(), period + 1, device_pk, payload)
    try:
        calls = _hot_command("EVALSHA", _RECORD_SHA, 2, *args)
    except redis.exceptions.NoScriptError:  # a restarted or flushed Redis: load it once more
        calls = _hot_command("EVAL", _RECORD_SCRIPT, 2, *args)
    if calls <= count:
        return None
    return max(1, (window + 1) * period - int(now.timestamp()))


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
        connection = _redis().connection_pool.make_connection()
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
    return {int(pk): json.loads(raw) for pk, raw in _redis().hgetall(_buffer_key()).items()}


def heartbeats_flush() -> int:
    """Writes buffered heartbeats to the devices table in one UPDATE; returns how many devices.

    The buffer is renamed first, so heartbeats arriving during the flush land in a fresh one; a
    flush that dies halfway leaves its renamed copy, which the next flush picks up.
    """
    client = _redis()
    key = _buffer_key()
    batch_key = f"{key}:flushing:{uuid.uuid4().hex}"
    with contextlib.suppress(redis.ResponseError):  # no such key: nothing buffered
        client.rename(key, batch_key)
    flushed = 0
    for leftover in client.scan_iter(match=f"{key}:flushing:*", count=100):
        entries = {int(pk): json.loads(raw) for pk, raw in client.hgetall(leftover).items()}
        flushed += _write_heartbeats(entries)
        client.delete(leftover)
    return flushed


def _write_heartbeats(entries: dict[int, dict]) -> int:
    if not entries:
        return 0
    model_ids = {f"{r['model']}-{r['version']}" for e in entries.values() if (r := e.get("running"))}
    versions = dict(ModelVersion.objects.filter(model_id__in=model_ids).values_list("model_id", "pk"))
    rows = []
    for pk, entry in entries.items():
        running, health = entry.get("running") or {}, entry.get("health") or {}
        model_id = f"{running.get('model')}-{running.get('version')}" if running else None
        rows.append((
            pk, datetime.fromisoformat(entry["at"]), versions.get(model_id) if model_id else None,
            running.get("model", ""), running.get("version", ""), running.get("sha256", ""),
            health.get("cpu_percent"), health.get("memory_percent"), health.get("disk_percent"),
        ))
    placeholders = ",".join(["(%s, %s::timestamptz, %s::bigint, %s, %s, %s, %s::float8, %s::float8, %s::float8)"]
                            * len(rows))
    # A heartbeat older than what is stored (a late flush) must not move last_seen backwards.
    sql = f"""
        UPDATE devices_device AS d SET
            last_seen = v.seen, current_version_id = v.version_id, reported_model = v.model,
            reported_version = v.version, reported_sha256 = v.sha256,
            cpu_percent = COALESCE(v.cpu, d.cpu_percent), memory_percent = COALESCE(v.mem, d.memory_percent),
            disk_percent = COALESCE(v.disk, d.disk_percent),
            status = CASE WHEN d.status = 'offline' THEN 'active' ELSE d.status END
        FROM (VALUES {placeholders}) AS v(pk, seen, version_id, model, version, sha256, cpu, mem, disk)
        WHERE d.id = v.pk AND (d.last_seen IS NULL OR d.last_seen <= v.seen)
    """  # noqa: S608 - only placeholders are interpolated
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [value for row in rows for value in row])
        return cursor.rowcount


def devices_mark_offline(*, now: datetime | None = None) -> int:
    """Active devices silent for DEVICE_OFFLINE_AFTER_SECONDS become offline (flush first, so none is missed)."""
    heartbeats_flush()
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.DEVICE_OFFLINE_AFTER_SECONDS)
    silent = Q(last_seen__lt=cutoff) | Q(last_seen__isnull=True, registered_at__lt=cutoff)
    return Device.objects.filter(silent, status=Device.Status.ACTIVE).update(status=Device.Status.OFFLINE)
