"""`manage.py create_api_token`: bootstrap CI on a server by printing a fresh API token's key."""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from hotswap.accounts.services import api_token_create


class Command(BaseCommand):
    """Creates an API token for a user and prints its key (and only the key) on stdout."""

    help = "Create an API token for USERNAME and print its key once (store it in your CI's secrets)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", required=True, help="Whose token it is; CI acts with this user's role.")
        parser.add_argument("--name", required=True, help="What the token is for, e.g. github-actions.")
        parser.add_argument("--expires-days", type=int, default=None, help="Days until it expires (default: never).")

    def handle(self, *args, username: str, name: str, expires_days: int | None, **options) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        if expires_days is not None and expires_days < 1:
            raise CommandError("--expires-days must be at least 1.")
        expires_at = timezone.now() + timedelta(days=expires_days) if expires_days else None
        try:
            token, key = api_token_create(user=user, name=name, created_by=None, expires_at=expires_at)
        except ValidationError as error:
            raise CommandError("; ".join(error.messages)) from error
        # The key alone on stdout, so `KEY=$(manage.py create_api_token …)` works; the notice goes to stderr.
        self.stdout.write(key)
        expiry = f"expires {token.expires_at:%Y-%m-%d %H:%M} UTC" if token.expires_at else "never expires"
        self.stderr.write(f"API token {token.name!r} ({token.prefix}) for {username}: {expiry}. "
                          "The key is shown only this once.")
