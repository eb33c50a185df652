"""JWT refresh: a refresh token works once, and not at all for a deleted, inactive or re-passworded user."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt import serializers as simplejwt
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.utils import get_md5_hash_password


class TokenRefreshSerializer(simplejwt.TokenRefreshSerializer):
    """simplejwt's refresh (SIMPLE_JWT["TOKEN_REFRESH_SERIALIZER"]), with the checks simplejwt 5.5 leaves out.

    simplejwt checks CHECK_REVOKE_TOKEN's password claim only when an access token is used, so a refresh
    token issued before a password change would go on minting access tokens; it answers 500 for a token
    whose user was deleted; and two concurrent uses of one refresh token both pass its blacklist check.
    """

    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        refresh = self.token_class(attrs["refresh"])  # signature, expiry, type and blacklist
        user_id = refresh.get(api_settings.USER_ID_CLAIM)
        user = get_user_model().objects.filter(**{api_settings.USER_ID_FIELD: user_id}).first()
        if user is None or not api_settings.USER_AUTHENTICATION_RULE(user):
            raise AuthenticationFailed(self.error_messages["no_active_account"], "no_active_account")
        if refresh.get(api_settings.REVOKE_TOKEN_CLAIM) != get_md5_hash_password(user.password):
            raise AuthenticationFailed("The user's password has been changed.", "password_changed")
        # BlacklistedToken is one row per token (a unique key): of two concurrent uses only one creates it.
        _, created = refresh.blacklist()
        if not created:
            raise AuthenticationFailed("This refresh token has already been used.", "token_not_valid")
        data = {"access": str(refresh.access_token)}
        # The same claims (user, password digest) under a new id and lifetime: the rotated refresh token.
        refresh.set_jti()
        refresh.set_exp()
        refresh.set_iat()
        refresh.outstand()
        data["refresh"] = str(refresh)
        return data
