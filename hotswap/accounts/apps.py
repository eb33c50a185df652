"""People, CI tokens and roles."""

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Roles (groups with permissions), API tokens for CI, JWT for people."""

    name = "hotswap.accounts"
    label = "accounts"
    verbose_name = "Accounts and access"
