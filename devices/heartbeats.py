"""What a check-in tells Redis, in one round trip: its heartbeat, its rate, and its metric windows.

Heartbeats are buffered and flushed to PostgreSQL in bulk, so a check-in writes no row. Last-seen,
health and what a device runs are soft state: if Redis loses the buffer, the next check-in (every
poll interval) restores it.

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

import redis
from django.conf import settings
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from devices.models import Device
from models_app.models import ModelVersion

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


def heartbeat_record(*, device_pk: int, running: dict | None, health: dict | None, now: datetime,
                     metric_windows: str = "") -> Recorded:
    """Buffers the heartbeat (and the windows, a JSON array) and counts the call against the device's rate.

    retry_after is set when the device is over THROTTLE_DEVICE_CHECKIN. The limit is a fixed window
    counter (INCR + EXPIRE): cheap enough for the hot path, and a misbehaving device cannot crowd out
    the fleet. A later heartbeat of the same device overwrites an unflushed one; windows are appended.
    """
    count, period = _rate(settings.THROTTLE_RATES["device_checkin"])
    window = int(now.timestamp()) // period
    rate_key = f"{settings.CACHES['default']['KEY_PREFIX']}:checkin-rate:{device_pk}:{window}"
    payload = json.dumps({"at": now.isoformat(), "running": running, "health": health}, separators=(",", ":"))
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
    """Writes buffered heartbeats to the devices table in one UPDATE; returns how many devices."""
    client = redis_client()
    flushed = 0
    for batch in buffer_batches(_buffer_key()):
        flushed += _write_heartbeats([(int(pk), raw) for pk, raw in client.hgetall(batch).items()])
        client.delete(batch)
    return flushed


def _write_heartbeats(entries: list[tuple[int, bytes]]) -> int:
    """One UPDATE for the entries; if it is refused, each half is tried alone (bisection) down to the bad ones.

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


def _update_heartbeats(raw_entries: list[tuple[int, bytes]]) -> int:
    entries = {pk: json.loads(raw) for pk, raw in raw_entries}
    model_ids = {f"{r['model']}-{r['version']}" for e in entries.values() if (r := e.get("running"))}
    rows = []
    for pk, entry in entries.items():
        running, health = entry.get("running") or {}, entry.get("health") or {}
        model_id = f"{running.get('model')}-{running.get('version')}" if running else None
        rows.append((
            pk, datetime.fromisoformat(entry["at"]), model_id,  # resolved to the version's pk below
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
    # The lookup is inside the savepoint too: a name PostgreSQL refuses fails it first.
    with transaction.atomic(), connection.cursor() as cursor:
        versions = dict(ModelVersion.objects.filter(model_id__in=model_ids).values_list("model_id", "pk"))
        cursor.execute(sql, [value for row in rows for value in (*row[:2], versions.get(row[2]), *row[3:])])
        return cursor.rowcount


def devices_mark_offline(*, now: datetime | None = None) -> int:
    """Active devices silent for DEVICE_OFFLINE_AFTER_SECONDS become offline (flush first, so none is missed)."""
    heartbeats_flush()
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.DEVICE_OFFLINE_AFTER_SECONDS)
    silent = Q(last_seen__lt=cutoff) | Q(last_seen__isnull=True, registered_at__lt=cutoff)
    return Device.objects.filter(silent, status=Device.Status.ACTIVE).update(status=Device.Status.OFFLINE)
