"""Thin periodic tasks of accounts: forgetting expired JWTs."""

from celery import shared_task

from hotswap.accounts.services import jwt_expired_tokens_delete


@shared_task
def jwt_expired_tokens_flush() -> int:
    return jwt_expired_tokens_delete()
