"""REST API settings: DRF, auth, roles, throttles, OpenAPI."""

from hotswap.settings.env import env

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
        "hotswap.accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Fail closed: a view must name the permission it needs (see hotswap.accounts.permissions).
    "DEFAULT_PERMISSION_CLASSES": ["hotswap.accounts.permissions.RolePermission"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # Every JSON body is refused with a 400 when nested too deep or holding text PostgreSQL cannot store.
    "DEFAULT_PARSER_CLASSES": ["hotswap.lib.parsers.JSONParser"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "hotswap.lib.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "hotswap.exceptions.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "hotswap.lib.schema.ViewNamedAutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}

# Rates per MISSION.md, each overridable: THROTTLE_UPLOAD=100/hour and so on.
THROTTLE_RATES = {
    "upload": env.str("THROTTLE_UPLOAD", default="10/hour"),
    "distribution_create": env.str("THROTTLE_DISTRIBUTION_CREATE", default="20/hour"),
    "monitor": env.str("THROTTLE_MONITOR", default="600/minute"),
    "device_checkin": env.str("THROTTLE_DEVICE_CHECKIN", default="120/minute"),
    "login": env.str("THROTTLE_LOGIN", default="30/minute"),
    "enroll": env.str("THROTTLE_ENROLL", default="60/minute"),
}

SPECTACULAR_SETTINGS = {
    "TITLE": "HotSwap API",
    "DESCRIPTION": (
        "Ship AI models to fleets of edge devices, safely. People and CI authenticate with "
        "`Authorization: Bearer <JWT>` (POST /api/v1/auth/token) or `Authorization: Token <api token>`. "
        "Every error has the shape `{\"error\": {\"code\", \"message\", \"details\", \"trace_id\", \"timestamp\"}}`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}
