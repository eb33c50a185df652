"""The model registry app."""

from django.apps import AppConfig


class ModelsAppConfig(AppConfig):
    """Registry of AI models, their versions and artifacts."""

    name = "models_app"
    verbose_name = "Model registry"
