"""Thin periodic tasks of the fleet: heartbeat and metric-window flushes, offline detection, telemetry rollup and
pruning."""

from celery import shared_task

from devices import heartbeats
from devices.services import telemetry


@shared_task
def device_heartbeats_flush() -> int:
    return heartbeats.heartbeats_flush()


@shared_task
def devices_mark_offline() -> int:
    return heartbeats.devices_mark_offline()


@shared_task
def metric_windows_flush() -> int:
    return telemetry.metric_windows_flush()


@shared_task
def metric_rollup() -> int:
    return telemetry.metric_rollup_recent()


@shared_task
def metric_windows_prune() -> int:
    return telemetry.metric_windows_prune()
