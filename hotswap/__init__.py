"""HotSwap: safe AI model distribution to edge fleets."""

from hotswap.celery import app as celery_app

__all__ = ["celery_app"]
