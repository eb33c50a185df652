"""Rollouts: distributions in stages, the orchestrator, the health judge."""

from django.apps import AppConfig


class RolloutsConfig(AppConfig):
    """Staged distributions of model versions to the fleet."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "rollouts"
    verbose_name = "Rollouts"

    def ready(self) -> None:
        from rollouts import signals  # noqa: F401 - registers the model-version in-use check
