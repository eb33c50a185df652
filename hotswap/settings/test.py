"""Test settings: the same stack as production, on real servers found or started for the run."""

from hotswap.lib.localservices import ensure_test_services

ensure_test_services()

from hotswap.settings.base import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed; not a security boundary in tests
CELERY_TASK_ALWAYS_EAGER = False
