"""Reports are stored once (unique identities), and rows with times Python cannot read are removed."""

from django.db import migrations, models

# Times a device sent before they were bounded: PostgreSQL keeps BC and far-future timestamps that
# Python's datetime cannot load (a 500 for every page listing them). They are no real reports.
OUT_OF_RANGE_SQL = """
    DELETE FROM devices_installreport
    WHERE NOT isfinite(reported_at) OR reported_at < '0001-01-02Z' OR reported_at >= '9999-12-31Z';
    DELETE FROM devices_metricwindow
    WHERE NOT (isfinite(window_start) AND isfinite(window_end)) OR window_start < '0001-01-02Z'
       OR window_end >= '9999-12-31Z';
"""
# Keep the first copy of every report sent more than once (the unique constraints below need it), in one
# sort per table rather than a self-join.
DEDUPLICATE_SQL = """
    DELETE FROM devices_installreport WHERE id IN (
        SELECT id FROM (
            SELECT id, row_number() OVER (PARTITION BY device_id, model_name, model_version, status, sequence,
                                                       reported_at ORDER BY id) AS copy
            FROM devices_installreport) copies
        WHERE copy > 1);
    DELETE FROM devices_metricwindow WHERE id IN (
        SELECT id FROM (
            SELECT id, row_number() OVER (PARTITION BY device_id, model_name, model_version, window_start
                                          ORDER BY id) AS copy
            FROM devices_metricwindow) copies
        WHERE copy > 1);
"""


class Migration(migrations.Migration):

    dependencies = [
        ('devices', '0003_metricwindowbatch'),
        ('models_app', '0003_modelversion_traceparent'),
    ]

    operations = [
        migrations.RunSQL(OUT_OF_RANGE_SQL, migrations.RunSQL.noop),
        migrations.RunSQL(DEDUPLICATE_SQL, migrations.RunSQL.noop),
        migrations.AddConstraint(
            model_name='installreport',
            constraint=models.UniqueConstraint(fields=('device', 'model_name', 'model_version', 'status', 'sequence', 'reported_at'), name='install_report_once', nulls_distinct=False),
        ),
        migrations.AddConstraint(
            model_name='metricwindow',
            constraint=models.UniqueConstraint(fields=('device', 'model_name', 'model_version', 'window_start'), name='metric_window_once'),
        ),
    ]
