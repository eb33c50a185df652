"""Django settings for HotSwap; every value comes from the environment with a laptop default."""

from datetime import timedelta
from pathlib import Path

import environ

from hotswap.settings.env import BASE_DIR, VAR_DIR, env

# First: DEBUG, SECRET_KEY (refused when weak, before any embedded server starts), TLS, trusted proxies.
from hotswap.settings.security import *  # noqa: F403

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "rest_framework_simplejwt",
    "rest_framework_simplejwt.token_blacklist",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "django_prometheus",
    "hotswap",
    "hotswap.accounts",
    "models_app",
    "devices",
    "rollouts",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "hotswap.middleware.RequestIdMiddleware",
    "hotswap.observability.middleware.RequestContextMiddleware",
    "hotswap.middleware.UnstorableInputMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]
# Device check-ins (hotswap/handlers.py) take only these: request id, log context and the check-in
# metrics. The view authenticates the device itself; sessions, CSRF and the console's middleware
# have nothing to do there. Plain __call__ middleware only.
DEVICE_MIDDLEWARE = [
    "hotswap.middleware.RequestIdMiddleware",
    "hotswap.observability.middleware.RequestContextMiddleware",
]

ROOT_URLCONF = "hotswap.urls"
WSGI_APPLICATION = "hotswap.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database_url() -> str:
    url = env.str("DATABASE_URL", default="")
    if url:
        return url
    from hotswap.lib.localservices import embedded_postgres_url

    return embedded_postgres_url(VAR_DIR / "pgdata")


DATABASES = {"default": env.db_url_config(_database_url())}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# psycopg prepares only the statements a caller asks it to (the check-in's identity read, see
# CHECKIN_PREPARED_STATEMENTS): the ORM's client-side binding never prepares, and Django's default of
# None would silently ignore the request too, re-planning the check-in's join on every call.
DATABASES["default"].setdefault("OPTIONS", {}).setdefault("prepare_threshold", 2**31 - 1)
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise environ.ImproperlyConfigured("HotSwap needs PostgreSQL: DATABASE_URL must be postgres://…")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _redis_url() -> str:
    url = env.str("REDIS_URL", default="")
    if url:
        return url
    from hotswap.lib.localservices import embedded_redis_url

    return embedded_redis_url(VAR_DIR / "redis" / "hotswap.db")


REDIS_URL = _redis_url()
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="hotswap"),
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=str(VAR_DIR / "static"))
Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)  # whitenoise warns on every start without it
# Serve straight from the finders when collectstatic has not run (dev, tests).
WHITENOISE_USE_FINDERS = True

# Non-file form fields stay small; artifacts stream through their own handler and limit.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=2_621_440)

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_MINUTES", default=15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_DAYS", default=1)),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "UPDATE_LAST_LOGIN": True,
    # Every refresh returns a new refresh token and blacklists the one it was given: a stolen refresh
    # token works once at most (expired rows go: hotswap.accounts.tasks.jwt_expired_tokens_flush).
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    # Tokens carry a digest of the password hash: a new password ends every JWT issued before it.
    "CHECK_REVOKE_TOKEN": True,
    "TOKEN_REFRESH_SERIALIZER": "hotswap.accounts.jwt.TokenRefreshSerializer",
}

from hotswap.settings.api import *  # noqa: E402,F403
from hotswap.settings.devices import *  # noqa: E402,F403
from hotswap.settings.observability import *  # noqa: E402,F403
from hotswap.settings.rollouts import *  # noqa: E402,F403
from hotswap.settings.storage import *  # noqa: E402,F403
from hotswap.settings.tasks import *  # noqa: E402,F403
from hotswap.settings.tasks import celery_broker_url  # noqa: E402
from hotswap.settings.validation import *  # noqa: E402,F403

CELERY_BROKER_URL = celery_broker_url(REDIS_URL)
CELERY_RESULT_BACKEND = None
