"""Test settings: the same stack as production, on real servers found or started for the run."""

import os

from hotswap.lib.localservices import ensure_test_services

ensure_test_services()

from hotswap.settings.base import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed; not a security boundary in tests
CELERY_TASK_ALWAYS_EAGER = False

# One test database per run, so parallel runs on one PostgreSQL don't drop each other's database.
TEST_DB_NAME = os.environ.setdefault("HOTSWAP_TEST_DB_NAME", f"test_hotswap_{os.getpid()}")
DATABASES["default"]["TEST"] = {"NAME": TEST_DB_NAME}  # noqa: F405
# Likewise one Celery queue per run: workers of a parallel run must not take this run's tasks.
CELERY_TASK_DEFAULT_QUEUE = os.environ.setdefault("HOTSWAP_TEST_QUEUE", f"hotswap-test-{os.getpid()}")
CELERY_VALIDATION_QUEUE = f"{CELERY_TASK_DEFAULT_QUEUE}-validation"
CELERY_TASK_ROUTES = {"models_app.tasks.model_version_validate": {"queue": CELERY_VALIDATION_QUEUE}}
