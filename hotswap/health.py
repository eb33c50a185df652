"""Liveness (`/health`: the process answers) and readiness (`/ready`: database, Redis, broker and storage answer)."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from pathlib import Path

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from hotswap.exceptions import error_body

_CREDENTIALS = re.compile(r"//[^/@\s]*@")


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _redis_url(url: str) -> str:
    # Celery spells unix sockets redis+socket://; redis-py says unix://.
    return url.replace("redis+socket://", "unix://", 1)


def _cache_url() -> str:
    location = settings.CACHES["default"]["LOCATION"]
    return location if isinstance(location, str) else location[0]  # the primary of a replicated cache


def check_database(timeout: float) -> None:
    """SELECT 1 on a connection of its own, with a connect and statement timeout (the request's stays untouched)."""
    default = connections["default"]
    params = {**default.settings_dict, "OPTIONS": {**default.settings_dict.get("OPTIONS", {}),
                                                   "connect_timeout": max(2, math.ceil(timeout))}}
    probe = default.__class__(params, alias=default.alias)
    try:
        with probe.cursor() as cursor:
            cursor.execute("SET statement_timeout = %s", [int(timeout * 1000)])
            cursor.execute("SELECT 1")
    finally:
        probe.close()


def check_redis(url: str, timeout: float) -> None:
    import redis

    client = redis.Redis.from_url(_redis_url(url), socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()


def check_broker(timeout: float) -> None:
    url = settings.CELERY_BROKER_URL
    if url.startswith(("redis://", "rediss://", "redis+socket://", "unix://")):
        check_redis(url, timeout)
        return
    from kombu import Connection

    with Connection(url, connect_timeout=timeout) as broker:
        broker.ensure_connection(max_retries=1, timeout=timeout)


def check_storage(timeout: float) -> None:
    options = settings.STORAGES["artifacts"]["OPTIONS"]
    if not settings.S3_BUCKET:
        location = Path(options["location"])
        location.mkdir(parents=True, exist_ok=True)  # as the first upload would: a fresh install is ready
        probe = location / f".ready-{time.monotonic_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
        return
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=options.get("endpoint_url"), aws_access_key_id=options.get("access_key"),
        aws_secret_access_key=options.get("secret_key"), region_name=options.get("region_name"),
        config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1},
                      s3={"addressing_style": options.get("addressing_style", "path")}),
    )
    client.head_bucket(Bucket=settings.S3_BUCKET)


def _checks(timeout: float) -> dict[str, Callable[[], None]]:
    return {
        "database": lambda: check_database(timeout),
        "redis": lambda: check_redis(_cache_url(), timeout),
        "broker": lambda: check_broker(timeout),
        "storage": lambda: check_storage(timeout),
    }


def _timed(check: Callable[[], None]) -> dict:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:
        message = _CREDENTIALS.sub("//", f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]
        return {"ok": False, "error": message, "ms": round((time.perf_counter() - started) * 1000, 1)}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def readiness() -> dict[str, dict]:
    """Every dependency checked in parallel; one that has not answered within READY_TIMEOUT_SECONDS is down."""
    timeout = settings.READY_TIMEOUT_SECONDS
    checks = _checks(timeout)
    pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="ready")
    futures = {name: pool.submit(_timed, check) for name, check in checks.items()}
    wait_for(futures.values(), timeout=timeout + 0.5)
    pool.shutdown(wait=False, cancel_futures=True)  # a hung check ends on its own socket timeout
    return {name: future.result() if future.done() else {"ok": False, "error": f"no answer within {timeout} s"}
            for name, future in futures.items()}


@require_GET
def ready(request: HttpRequest) -> JsonResponse:
    results = readiness()
    down = [name for name, result in results.items() if not result["ok"]]
    if not down:
        return JsonResponse({"status": "ready", "checks": results})
    return JsonResponse(error_body(
        request, code="NOT_READY", message=f"Not ready: {', '.join(down)} unreachable.",
        details=[{"field": name, "message": results[name]["error"]} for name in down], extra={"checks": results},
    ), status=503)
