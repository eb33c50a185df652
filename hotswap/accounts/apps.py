"""People, CI tokens and roles."""

from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    """Roles (groups with permissions), API tokens for CI, JWT for people."""

    name = "hotswap.accounts"
    label = "accounts"
    verbose_name = "Accounts and access"

    def ready(self) -> None:
        from hotswap.accounts import schema  # noqa: F401  (registers the OpenAPI extension for API tokens)

        post_migrate.connect(_roles_ensure_after_migrate, dispatch_uid="accounts.roles_ensure")


def _roles_ensure_after_migrate(sender: AppConfig, using: str = "default", **kwargs) -> None:
    # post_migrate fires once per app and auth creates each app's permissions in that app's turn,
    # so the groups are synced on the last app's signal, when every permission exists.
    with_models = [config for config in apps.get_app_configs() if config.models_module is not None]
    if not with_models or sender is not with_models[-1]:
        return
    from hotswap.accounts.services import roles_ensure

    roles_ensure(using=using)
