"""API token authentication for CI: `Authorization: Token hs_<prefix>_<secret>`."""

from __future__ import annotations

import hmac

from django.utils import timezone
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from hotswap.accounts import keys
from hotswap.accounts.models import ApiToken
from hotswap.accounts.selectors import api_token_get_by_prefix
from hotswap.accounts.services import api_token_touch


class ApiTokenAuthentication(BaseAuthentication):
    """Finds the token by its public prefix and compares the secret's SHA-256 in constant time."""

    keyword = "Token"

    def authenticate(self, request: Request) -> tuple[object, ApiToken] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            return None  # Another scheme (Bearer, Basic) or none: let the other authenticators look.
        if len(parts) != 2:
            raise AuthenticationFailed("Malformed Authorization header: use 'Authorization: Token <key>'.")
        try:
            key = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise AuthenticationFailed("Malformed API token: it must be ASCII.") from None
        return self.authenticate_credentials(key)

    def authenticate_credentials(self, key: str) -> tuple[object, ApiToken]:
        split = keys.key_split(key)
        if split is None:
            raise AuthenticationFailed("Malformed API token: expected hs_<prefix>_<secret>.")
        prefix, secret = split
        token = api_token_get_by_prefix(prefix=prefix)
        if token is None or not hmac.compare_digest(token.key_hash, keys.secret_hash(secret)):
            raise AuthenticationFailed("Invalid API token.")
        # Status is only reported to someone who holds the whole key.
        now = timezone.now()
        if token.revoked_at is not None:
            raise AuthenticationFailed("This API token has been revoked.")
        if token.is_expired(now):
            raise AuthenticationFailed("This API token has expired.")
        if not token.user.is_active:
            raise AuthenticationFailed("The user this API token belongs to is inactive.")
        api_token_touch(token=token, now=now)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
