"""A distribution ships one model; a device belongs to one open distribution per model."""

import django.db.models.deletion
from django.db import migrations, models


MODEL_OF_VERSION_SQL = """
    UPDATE rollouts_distribution d SET ai_model_id = v.ai_model_id
    FROM models_app_modelversion v WHERE v.id = d.version_id;
    UPDATE rollouts_assignment a SET ai_model_id = d.ai_model_id
    FROM rollouts_distribution d WHERE d.id = a.distribution_id;
"""


class Migration(migrations.Migration):

    dependencies = [
        ('devices', '0005_model_slots'),
        ('models_app', '0005_modelversion_scrub'),
        ('rollouts', '0001_initial'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='assignment',
            name='one_open_assignment_per_device',
        ),
        migrations.AddField(
            model_name='assignment',
            name='ai_model',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='models_app.aimodel'),
        ),
        migrations.AddField(
            model_name='distribution',
            name='ai_model',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='distributions', to='models_app.aimodel'),
        ),
        migrations.RunSQL(MODEL_OF_VERSION_SQL, migrations.RunSQL.noop),
        migrations.AlterField(
            model_name='assignment',
            name='ai_model',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='models_app.aimodel'),
        ),
        migrations.AlterField(
            model_name='distribution',
            name='ai_model',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='distributions', to='models_app.aimodel'),
        ),
        migrations.AddConstraint(
            model_name='assignment',
            constraint=models.UniqueConstraint(condition=models.Q(('is_open', True)), fields=('device', 'ai_model'), name='one_open_assignment_per_device_model'),
        ),
    ]
