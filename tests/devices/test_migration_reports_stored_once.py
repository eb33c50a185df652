"""Migration 0004 on existing data: rows with times Python cannot read go, copies of a report go, one stays."""

import importlib
from datetime import timedelta

import pytest
from django.db import DataError, connection
from django.test import Client
from django.utils import timezone

from devices.models import InstallReport, MetricWindow

pytestmark = pytest.mark.django_db

migration = importlib.import_module("devices.migrations.0004_reports_stored_once")


def insert_install(device, at_sql: str, status: str = "failed", sequence: int | None = 3) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"""
            INSERT INTO devices_installreport (device_id, model_name, model_version, status, error, sequence,
                                               reported_at, received_at, traceparent)
            VALUES (%s, 'resnet', '1.0.0', %s, '', %s, {at_sql}, now(), '')""", [device.pk, status, sequence])  # noqa: S608


def insert_window(device, start_sql: str, count: int = 600) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"""
            INSERT INTO devices_metricwindow (device_id, model_name, model_version, window_start, window_end,
                                              inference_count, error_count, latency_p50_ms, latency_p95_ms,
                                              latency_p99_ms, received_at)
            VALUES (%s, 'resnet', '1.0.0', {start_sql}, {start_sql} + interval '1 minute', %s, 0, 1, 2, 3, now())
        """, [device.pk, count])  # noqa: S608


def test_it_removes_the_bc_reports_that_made_the_console_and_the_metrics_api_answer_500(make_device, make_user,
                                                                                         client_for):
    device = make_device(device_id="cam-1")
    insert_install(device, "'0001-01-01T00:00:00+14:00'::timestamptz")  # as stored before times were bounded
    insert_window(device, "'0001-01-01T00:00:00+14:00'::timestamptz")
    insert_install(device, "now()")
    insert_window(device, "now() - interval '2 minutes'")
    console = Client()
    console.force_login(make_user("Admin", is_staff=True))
    api = client_for("Viewer")
    with pytest.raises(DataError, match="too small"):  # what the console and the API answered 500 for
        list(InstallReport.objects.values_list("reported_at", flat=True))

    with connection.cursor() as cursor:
        cursor.execute(migration.OUT_OF_RANGE_SQL)

    assert InstallReport.objects.count() == 1 and MetricWindow.objects.count() == 1
    assert console.get("/admin/devices/installreport/").status_code == 200
    assert console.get("/admin/devices/metricwindow/").status_code == 200
    assert api.get("/api/v1/devices/cam-1/metrics").status_code == 200


def test_it_keeps_one_copy_of_each_report_so_the_unique_constraints_can_be_added(make_device):
    device, other = make_device(device_id="cam-1"), make_device(device_id="cam-2")
    start = timezone.now() - timedelta(minutes=5)
    with connection.cursor() as cursor:  # the data of a server that stored every resend
        cursor.execute("ALTER TABLE devices_installreport DROP CONSTRAINT install_report_once")
        cursor.execute("ALTER TABLE devices_metricwindow DROP CONSTRAINT metric_window_once")
    for _ in range(3):
        insert_install(device, "'2026-11-23T12:00:00Z'")
        insert_install(device, "'2026-11-23T12:00:00Z'", sequence=None)
        insert_window(device, f"'{start.isoformat()}'::timestamptz", count=1)
    insert_install(device, "'2026-11-23T12:00:00Z'", status="active")
    insert_install(other, "'2026-11-23T12:00:00Z'")
    insert_window(other, f"'{start.isoformat()}'::timestamptz", count=2)
    first_ids = [InstallReport.objects.order_by("id")[i].pk for i in (0, 1)]

    with connection.cursor() as cursor:
        cursor.execute(migration.DEDUPLICATE_SQL)
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the inserts' foreign key checks, before the ALTERs
        cursor.execute("""ALTER TABLE devices_installreport ADD CONSTRAINT install_report_once UNIQUE NULLS NOT
                          DISTINCT (device_id, model_name, model_version, status, sequence, reported_at)""")
        cursor.execute("""ALTER TABLE devices_metricwindow ADD CONSTRAINT metric_window_once
                          UNIQUE (device_id, model_name, model_version, window_start)""")

    assert sorted(InstallReport.objects.values_list("device__device_id", "status", "sequence"), key=str) == [
        ("cam-1", "active", 3), ("cam-1", "failed", 3), ("cam-1", "failed", None), ("cam-2", "failed", 3)]
    assert set(first_ids) < set(InstallReport.objects.values_list("pk", flat=True))  # the first copy stays
    assert sorted(MetricWindow.objects.values_list("device__device_id", "inference_count")) == [
        ("cam-1", 1), ("cam-2", 2)]
