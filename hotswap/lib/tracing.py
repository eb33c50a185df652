"""W3C trace context helpers (https://www.w3.org/TR/trace-context/)."""

import re
import secrets

TRACEPARENT_PATTERN = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def valid_traceparent(value: str | None) -> str:
    """The value when it is a well-formed, non-zero traceparent, else ""."""
    match = TRACEPARENT_PATTERN.match(value or "")
    if not match or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        return ""
    return value or ""
