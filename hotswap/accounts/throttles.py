"""Per-user rate limits on the shared Redis cache; rates read from settings at request time."""

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

from hotswap.lib.clientip import client_address


class RoleScopedThrottle(SimpleRateThrottle):
    """Counts requests per user (or per client IP for anonymous calls) in one named scope."""

    scope = ""

    def get_rate(self) -> str | None:
        # Read at request time so THROTTLE_* variables and test overrides take effect.
        return settings.THROTTLE_RATES.get(self.scope)

    def get_ident(self, request) -> str:
        # DRF's own believes X-Forwarded-For from anyone: a client rotating it would be a new client each time.
        return client_address(request)

    def get_cache_key(self, request, view) -> str:
        ident = f"user:{request.user.pk}" if request.user and request.user.is_authenticated else self.get_ident(request)
        return f"throttle:{self.scope}:{ident}"


class UploadThrottle(RoleScopedThrottle):
    """A per-user quota of accepted uploads: new versions created in the window, not calls.

    The check refuses a call only once the quota is used up and records nothing itself; the view calls
    accepted() when a new version was created. Rejected uploads, idempotent retries of an existing version,
    starting or resuming an upload session and its part requests cost nothing.
    """

    scope = "upload"

    def throttle_success(self) -> bool:
        return True

    @classmethod
    def accepted(cls, request, view) -> None:
        """Counts one new version against the caller's quota."""
        throttle = cls()
        if throttle.rate is None:
            return
        key = throttle.get_cache_key(request, view)
        now = throttle.timer()
        history = [at for at in throttle.cache.get(key, []) if at > now - throttle.duration]
        throttle.cache.set(key, [now, *history], throttle.duration)


class DistributionCreateThrottle(RoleScopedThrottle):
    scope = "distribution_create"


class MonitorThrottle(RoleScopedThrottle):
    scope = "monitor"


class LoginThrottle(RoleScopedThrottle):
    """Counts login attempts per client IP, whichever username they try (slows password guessing)."""

    scope = "login"

    def get_cache_key(self, request, view) -> str:
        return f"throttle:{self.scope}:{self.get_ident(request)}"


class EnrollThrottle(RoleScopedThrottle):
    """Counts device enrollments per client IP (the caller has no identity yet; slows key guessing)."""

    scope = "enroll"

    def get_cache_key(self, request, view) -> str:
        return f"throttle:{self.scope}:{self.get_ident(request)}"
