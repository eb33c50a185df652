"""Semantic-version precedence as one sortable key the database computes (rc.9 before rc.10, as in Python)."""

from django.db import migrations, models

# A byte-comparable key (compared with COLLATE "C"): zero-padded major.minor.patch, then '~' for a release
# (after every pre-release) or '!' and the pre-release identifiers joined by ' ' (below every identifier
# character, so a shorter set of identifiers sorts first). A numeric identifier is '0', its length in two
# digits and its digits (numeric order, below alphanumerics); an alphanumeric one is '1' and its text.
SEMVER_KEY_SQL = r"""
CREATE OR REPLACE FUNCTION semver_key(major integer, minor integer, patch integer, prerelease varchar)
RETURNS varchar LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT lpad(major::text, 10, '0') || '.' || lpad(minor::text, 10, '0') || '.' || lpad(patch::text, 10, '0')
           || CASE WHEN prerelease = '' THEN '~' ELSE '!' || (
               SELECT string_agg(CASE WHEN part ~ '^[0-9]+$' THEN '0' || lpad(length(part)::text, 2, '0') || part
                                      ELSE '1' || part END, ' ' ORDER BY n)
               FROM unnest(string_to_array(prerelease, '.')) WITH ORDINALITY AS t(part, n)
           ) END
$$;
"""


class Migration(migrations.Migration):

    dependencies = [
        ('models_app', '0007_validation_profiles'),
    ]

    operations = [
        migrations.RunSQL(SEMVER_KEY_SQL, "DROP FUNCTION IF EXISTS semver_key(integer, integer, integer, varchar)"),
        migrations.RemoveIndex(
            model_name='modelversion',
            name='version_precedence_idx',
        ),
        migrations.AddField(
            model_name='modelversion',
            name='precedence',
            field=models.GeneratedField(db_persist=True, editable=False, expression=models.Func(models.F('major'), models.F('minor'), models.F('patch'), models.F('prerelease'), function='semver_key', output_field=models.CharField()), output_field=models.CharField(db_collation='C', max_length=400)),
        ),
        migrations.AlterModelOptions(
            name='modelversion',
            options={'ordering': ['ai_model__name', '-precedence'], 'permissions': [('upload_modelversion', 'Can upload model versions'), ('validate_modelversion', 'Can request validation of model versions'), ('deprecate_modelversion', 'Can deprecate model versions'), ('download_modelversion', 'Can download model artifacts'), ('approve_modelversion', 'Can approve or override a validation result')]},
        ),
        migrations.AddIndex(
            model_name='modelversion',
            index=models.Index(fields=['ai_model', 'precedence'], name='version_semver_order_idx'),
        ),
    ]
