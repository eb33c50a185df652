"""Hooks into other apps: a model version a device runs or should run cannot be deleted."""

from devices.models import ModelSlot
from models_app.services import register_version_in_use_check


@register_version_in_use_check
def version_on_devices(version) -> str | None:
    running = ModelSlot.objects.filter(running_version=version).count()
    desired = ModelSlot.objects.filter(version=version).count()
    if running or desired:
        return f"running on {running} device(s), desired on {desired}"
    return None
