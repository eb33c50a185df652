"""A device runs several models: one slot per (device, model) replaces the single desired state and running model."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


COPY_SLOTS_SQL = """
    INSERT INTO devices_modelslot (device_id, ai_model_id, version_id, remove, rollback, sequence, source, reason,
                                   set_by_id, set_at, traceparent, reported_version, reported_sha256, reported_at,
                                   refused_reason)
    SELECT s.device_id, v.ai_model_id, s.version_id, false, s.rollback, s.sequence, s.source, s.reason,
           s.set_by_id, s.set_at, s.traceparent, '', '', NULL, ''
    FROM devices_desiredstate s JOIN models_app_modelversion v ON v.id = s.version_id;

    INSERT INTO devices_modelslot AS slot (device_id, ai_model_id, running_version_id, reported_version,
                                           reported_sha256, reported_at, remove, rollback, sequence, source,
                                           reason, traceparent, refused_reason)
    SELECT d.id, v.ai_model_id, d.current_version_id, d.reported_version, d.reported_sha256, d.last_seen,
           false, false, 0, '', '', '', ''
    FROM devices_device d JOIN models_app_modelversion v ON v.id = d.current_version_id
    ON CONFLICT (device_id, ai_model_id) DO UPDATE
        SET running_version_id = EXCLUDED.running_version_id, reported_version = EXCLUDED.reported_version,
            reported_sha256 = EXCLUDED.reported_sha256, reported_at = EXCLUDED.reported_at;

    -- A device running a version of a registry model that the registry does not have: its slot keeps the
    -- reported version, with no running_version.
    INSERT INTO devices_modelslot AS slot (device_id, ai_model_id, reported_version, reported_sha256, reported_at,
                                           remove, rollback, sequence, source, reason, traceparent, refused_reason)
    SELECT d.id, m.id, d.reported_version, d.reported_sha256, d.last_seen, false, false, 0, '', '', '', ''
    FROM devices_device d JOIN models_app_aimodel m ON m.name = d.reported_model
    WHERE d.current_version_id IS NULL AND d.reported_version <> ''
    ON CONFLICT (device_id, ai_model_id) DO UPDATE
        SET reported_version = EXCLUDED.reported_version, reported_sha256 = EXCLUDED.reported_sha256,
            reported_at = EXCLUDED.reported_at;
"""


class Migration(migrations.Migration):

    dependencies = [
        ('devices', '0004_reports_stored_once'),
        ('models_app', '0005_modelversion_scrub'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='ModelSlot',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('remove', models.BooleanField(default=False, help_text='the device should unload and delete this model')),
                ('rollback', models.BooleanField(default=False)),
                ('sequence', models.PositiveBigIntegerField(default=0)),
                ('source', models.CharField(blank=True, help_text='manual, or the distribution that set it', max_length=64)),
                ('reason', models.CharField(blank=True, max_length=500)),
                ('set_at', models.DateTimeField(blank=True, null=True)),
                ('traceparent', models.CharField(blank=True, max_length=55)),
                ('reported_version', models.CharField(blank=True, max_length=64)),
                ('reported_sha256', models.CharField(blank=True, max_length=64)),
                ('reported_at', models.DateTimeField(blank=True, null=True)),
                ('refused_sequence', models.PositiveBigIntegerField(blank=True, null=True)),
                ('refused_reason', models.CharField(blank=True, max_length=2000)),
            ],
            options={
                'ordering': ['device', 'ai_model'],
            },
        ),
        migrations.AddField(
            model_name='modelslot',
            name='ai_model',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='slots', to='models_app.aimodel'),
        ),
        migrations.AddField(
            model_name='modelslot',
            name='device',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='slots', to='devices.device'),
        ),
        migrations.AddField(
            model_name='modelslot',
            name='running_version',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='running_slots', to='models_app.modelversion'),
        ),
        migrations.AddField(
            model_name='modelslot',
            name='set_by',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AddField(
            model_name='modelslot',
            name='version',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='desired_on', to='models_app.modelversion'),
        ),
        migrations.AddIndex(
            model_name='modelslot',
            index=models.Index(fields=['ai_model', 'running_version'], name='slot_model_running_idx'),
        ),
        migrations.AddIndex(
            model_name='modelslot',
            index=models.Index(fields=['running_version'], name='slot_running_idx'),
        ),
        migrations.AddIndex(
            model_name='modelslot',
            index=models.Index(fields=['version'], name='slot_desired_idx'),
        ),
        migrations.AddConstraint(
            model_name='modelslot',
            constraint=models.UniqueConstraint(fields=('device', 'ai_model'), name='one_slot_per_device_model'),
        ),
        migrations.AddConstraint(
            model_name='modelslot',
            constraint=models.CheckConstraint(condition=models.Q(('remove', False), ('version__isnull', True), _connector='OR'), name='slot_remove_or_version'),
        ),
        # Today's single slot becomes the device's slot for its model: the desired state goes to the slot of the
        # desired version's model, what the device runs to the slot of the running version's model (one slot
        # when both are the same model). A device whose desired model differs from the one it ran keeps both
        # slots: the old single-slot agent replaced one with the other; a v2 device runs them side by side.
        migrations.RunSQL(COPY_SLOTS_SQL, migrations.RunSQL.noop),
        migrations.RemoveIndex(
            model_name='device',
            name='device_reported_model_idx',
        ),
        migrations.RemoveIndex(
            model_name='device',
            name='device_reported_version_idx',
        ),
        migrations.RemoveField(
            model_name='device',
            name='current_version',
        ),
        migrations.RemoveField(
            model_name='device',
            name='reported_model',
        ),
        migrations.RemoveField(
            model_name='device',
            name='reported_sha256',
        ),
        migrations.RemoveField(
            model_name='device',
            name='reported_version',
        ),
        migrations.DeleteModel(
            name='DesiredState',
        ),
        migrations.AlterField(
            model_name='installreport',
            name='status',
            field=models.CharField(choices=[('downloading', 'Downloading'), ('installed', 'Installed'), ('active', 'Active'), ('failed', 'Failed'), ('refused', 'Refused'), ('rolled_back', 'Rolled Back'), ('removed', 'Removed')], max_length=16),
        ),
    ]
