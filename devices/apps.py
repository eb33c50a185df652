"""The device fleet: registry, credentials, check-in, telemetry."""

from django.apps import AppConfig


class DevicesConfig(AppConfig):
    """Edge devices and how they talk to HotSwap."""

    name = "devices"
    verbose_name = "Devices"

    def ready(self) -> None:
        from devices import signals  # noqa: F401 - registers the model-version in-use check
