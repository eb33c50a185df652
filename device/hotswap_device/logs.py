"""Signed download URLs out of log lines: they open an artifact to whoever reads the log, for an hour.

A presigned S3 URL carries its signature in the query (`X-Amz-Signature=…`, or `Signature=` for SigV2); a
local signed link (`/api/v1/artifacts/<token>`) in its last path segment. Both are logged without it:
the query becomes `?…` and the token `…`. The server's logging uses the same filter (it may import this
Django-free module; the agent imports nothing of the server's).
"""

from __future__ import annotations

import logging
import re

# The query of any URL or path that carries a signature; a local signed link's token.
_SIGNED_QUERY = re.compile(r"\?[^\s\"'<>]*(?:signature|x-amz-credential)=[^\s\"'<>]*", re.IGNORECASE)
_LOCAL_TOKEN = re.compile(r"(/api/v1/artifacts/)[^\s/?\"'<>]+")
REDACTED = "…"


def redact_signed_urls(text: str) -> str:
    """`text` with the signatures of signed download URLs removed (their query, or their token)."""
    if "/artifacts/" not in text and "ignature" not in text and "redential" not in text:
        return text  # the common case, without running the patterns
    return _LOCAL_TOKEN.sub(rf"\1{REDACTED}", _SIGNED_QUERY.sub(f"?{REDACTED}", text))


class SignedUrlFilter(logging.Filter):
    """Removes signatures from a record's message and from its string fields (`extra=`), e.g. httpx's lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_signed_urls(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        for name, value in list(vars(record).items()):
            if isinstance(value, str) and name not in ("msg", "message"):
                cleaned = redact_signed_urls(value)
                if cleaned != value:
                    setattr(record, name, cleaned)
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Puts the filter on every handler of `logger` (the root logger by default), so every line passes it."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, SignedUrlFilter) for f in handler.filters):
            handler.addFilter(SignedUrlFilter())
