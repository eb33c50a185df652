"""What the server and every device share: the wire protocol's version, paths, field names and limits.

One home for them (PROTOCOL.md is their prose): the reference agent and the simulator read them here,
and the server imports them from here rather than keeping copies. Standard library only.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

# The check-in protocol this code speaks (PROTOCOL.md). A body in another version's shape gets 400.
PROTOCOL_VERSION = 2

ENROLL_PATH = "/api/v1/devices/enroll"
CHECKIN_PATH = "/api/v1/devices/checkin"
MANIFEST_KEY_PATH = "/api/v1/devices/manifest-key"

# Upper bounds (ms) of the fixed latency histogram buckets; the last bucket is open.
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
HISTOGRAM_LENGTH = len(LATENCY_BUCKETS_MS) + 1

# Limits of one check-in (PROTOCOL.md §3).
MAX_ITEMS = 100  # install reports, and metric windows, per check-in
MAX_MODELS = 32  # model slots per device: models it runs, and models it is asked to run
MAX_COUNT = 1_000_000_000
MAX_LATENCY_MS = 600_000.0
MAX_WINDOW = timedelta(hours=1)
MAX_REPORT_AGE = timedelta(days=7)  # every time a device sends lies within [now - MAX_REPORT_AGE, now + CLOCK_SKEW]
CLOCK_SKEW = timedelta(seconds=60)
MAX_NAME_LENGTH = 64  # model names and versions

# Install report statuses; `removed` answers a removal (the model is unloaded and deleted from disk).
INSTALL_STATUSES = ("downloading", "installed", "active", "failed", "refused", "rolled_back", "removed")


def canonical_bytes(manifest: dict[str, Any]) -> bytes:
    """The exact bytes the server signs and a device verifies (Ed25519; PROTOCOL.md §3)."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --- Check-in v2 field names and codes (added with the server's v2 check-in; device-side additions go above) ---
# Top-level fields of a check-in body, and of each entry of its `models` list.
CHECKIN_FIELDS = ("protocol", "models", "health", "installs", "metrics", "traceparent")
RUNNING_MODEL_FIELDS = ("model", "version", "sha256")
# What a manifest of the answer's `desired` list asks of one model slot.
ACTION_INSTALL = "install"
ACTION_REMOVE = "remove"
# The error code of a body in another protocol version's shape (v1's `running`, no `protocol`, another number).
PROTOCOL_VERSION_UNSUPPORTED = "PROTOCOL_VERSION_UNSUPPORTED"
