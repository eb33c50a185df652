# A BRIN index replaces the B-tree on metric windows' received_at: one cheap entry per block range, not per window.

import django.contrib.postgres.indexes
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('devices', '0006_drop_repeated_indexes'),
        ('models_app', '0008_semver_order'),
    ]

    operations = [
        migrations.AlterField(
            model_name='metricwindow',
            name='received_at',
            field=models.DateTimeField(auto_now_add=True),
        ),
        migrations.AddIndex(
            model_name='metricwindow',
            index=django.contrib.postgres.indexes.BrinIndex(fields=['received_at'], name='metric_received_brin'),
        ),
    ]
