"""Drops indexes that repeat the leading column of another index on the same table.

Each cost every row written (a metric window paid for seven indexes, a model slot for ten) and served no
query the other does not. State: the foreign keys no longer ask for an index of their own. Database: only
the indexes go; Django's AlterField would also drop and re-add each foreign key, re-checking every row of
the telemetry tables under lock.
"""

import django.db.models.deletion
from django.db import migrations, models

# (index, table, column), as migrations 0001-0005 created them.
_INDEXES = [
    ("slot_running_idx", "devices_modelslot", "running_version_id"),
    ("slot_desired_idx", "devices_modelslot", "version_id"),
    ("devices_installreport_device_id_64050922", "devices_installreport", "device_id"),
    ("devices_metricwindow_device_id_64689f04", "devices_metricwindow", "device_id"),
    ("devices_metricwindow_version_id_ebdce19d", "devices_metricwindow", "version_id"),
    ("devices_modelslot_ai_model_id_9acc0745", "devices_modelslot", "ai_model_id"),
    ("devices_modelslot_device_id_9dd11bb1", "devices_modelslot", "device_id"),
]


class Migration(migrations.Migration):

    dependencies = [
        ('devices', '0005_model_slots'),
        ('models_app', '0008_semver_order'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveIndex(
                    model_name='modelslot',
                    name='slot_running_idx',
                ),
                migrations.RemoveIndex(
                    model_name='modelslot',
                    name='slot_desired_idx',
                ),
                migrations.AlterField(
                    model_name='installreport',
                    name='device',
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name='install_reports', to='devices.device'),
                ),
                migrations.AlterField(
                    model_name='metricwindow',
                    name='device',
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name='metric_windows', to='devices.device'),
                ),
                migrations.AlterField(
                    model_name='metricwindow',
                    name='version',
                    field=models.ForeignKey(
                        blank=True, db_index=False, null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name='metric_windows', to='models_app.modelversion'),
                ),
                migrations.AlterField(
                    model_name='modelslot',
                    name='ai_model',
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name='slots', to='models_app.aimodel'),
                ),
                migrations.AlterField(
                    model_name='modelslot',
                    name='device',
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name='slots', to='devices.device'),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    sql=[f'DROP INDEX IF EXISTS "{name}"' for name, _table, _column in _INDEXES],
                    reverse_sql=[f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table}" ("{column}")'
                                 for name, table, column in _INDEXES],
                ),
            ],
        ),
    ]
