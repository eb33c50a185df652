"""The four roles and exactly the permissions each one has (MISSION.md, "Auth")."""

from django.db import models


class Role(models.TextChoices):
    ADMIN = "Admin", "Admin"
    MODEL_DEVELOPER = "ModelDeveloper", "Model developer"
    OPERATOR = "Operator", "Operator"
    VIEWER = "Viewer", "Viewer"


# Read access, shared by every role.
_VIEW = [
    "models_app.view_aimodel",
    "models_app.view_modelversion",
    "models_app.view_validationreport",
    "devices.view_device",
    "rollouts.view_distribution",
]

# Admin is not listed: the Admin group holds every permission there is.
ROLE_PERMISSIONS: dict[str, list[str]] = {
    Role.VIEWER: _VIEW,
    Role.MODEL_DEVELOPER: [
        *_VIEW,
        "models_app.upload_modelversion",
        "models_app.validate_modelversion",
        "models_app.deprecate_modelversion",
        "models_app.download_modelversion",
    ],
    Role.OPERATOR: [
        *_VIEW,
        "models_app.download_modelversion",
        "devices.add_device",
        "devices.change_device",
        "devices.add_devicecredential",
        "devices.delete_devicecredential",
        "devices.set_desired_version",
        "rollouts.add_distribution",
        "rollouts.change_distribution",
        "rollouts.rollback_distribution",
    ],
}
