"""gunicorn's own error and access logs in the project's LOG_FORMAT (JSON lines like the app's, or gunicorn's text),
without the signatures of download links."""

from __future__ import annotations

from typing import Any

from gunicorn import glogging

from hotswap.observability.logs import JsonFormatter
from hotswap.settings.env import log_format
from hotswap_device.logs import SignedUrlFilter


class Logger(glogging.Logger):
    """gunicorn's logger; with LOG_FORMAT=json its handlers use the app's JsonFormatter and access lines carry fields.

    With LOG_FORMAT=console gunicorn's own readable lines are kept.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self._json = log_format(default="json") == "json"
        formatter = JsonFormatter() if self._json else None
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if formatter:
                    handler.setFormatter(formatter)
                # An access line names the signed download link it served (/api/v1/artifacts/<token>).
                handler.addFilter(SignedUrlFilter())

    def access(self, resp: Any, req: Any, environ: dict, request_time: Any) -> None:
        if not self._json:
            super().access(resp, req, environ, request_time)
            return
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        method, path = environ.get("REQUEST_METHOD", "-"), environ.get("PATH_INFO", "")
        headers = {name.lower(): value for name, value in resp.headers}
        fields = {
            "method": method, "path": path, "status": int(status) if str(status).isdigit() else status,
            "duration_ms": round(request_time.total_seconds() * 1000, 1),
            "query": environ.get("QUERY_STRING") or None, "remote_addr": environ.get("REMOTE_ADDR"),
            "user_agent": environ.get("HTTP_USER_AGENT"), "bytes": getattr(resp, "sent", None),
            # The id the app's own lines of this request carry (RequestIdMiddleware's response header).
            "request_id": headers.get("x-request-id"),
        }
        try:
            self.access_log.info("%s %s %s", method, path, status,
                                 extra={key: value for key, value in fields.items() if value is not None})
        except Exception:
            self.exception("access log line failed")

