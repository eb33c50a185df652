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


# --- Protocol v2: check-in fields, manifest actions, codes (server and device both read these) ---------------

# Top-level keys of a v2 check-in body, and of each entry of its `models` list (every model the device runs).
CHECKIN_FIELDS = ("protocol", "models", "health", "installs", "metrics", "traceparent")
MODEL_FIELDS = ("model", "version", "sha256")
# v1's single-model key: a body carrying it is refused with PROTOCOL_VERSION_UNSUPPORTED.
V1_RUNNING_FIELD = "running"
# A 400 with this code means client and server speak different protocol versions: no report is at fault.
PROTOCOL_VERSION_UNSUPPORTED = "PROTOCOL_VERSION_UNSUPPORTED"

# The answer's `desired` list holds one signed entry per slot: {"manifest", "signature", "key_id"}; a manifest
# asks the slot to run a version (install) or to unload and delete the model (remove).
ACTION_INSTALL = "install"
ACTION_REMOVE = "remove"
MANIFEST_ACTIONS = (ACTION_INSTALL, ACTION_REMOVE)
# Fields (and their JSON types) a signed manifest must carry, per action.
INSTALL_MANIFEST_FIELDS: dict[str, type] = {
    "action": str, "device_id": str, "model": str, "version": str, "sha256": str, "size": int, "url": str,
    "expires_at": str, "rollback": bool, "sequence": int,
}
REMOVE_MANIFEST_FIELDS: dict[str, type] = {
    "action": str, "device_id": str, "model": str, "expires_at": str, "sequence": int,
}
