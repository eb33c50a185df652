"""Device protocol settings: poll interval, offline detection, check-in limits, manifest signing, telemetry."""

from hotswap.settings.env import VAR_DIR, env

DEVICE_POLL_INTERVAL_SECONDS = env.int("DEVICE_POLL_INTERVAL_SECONDS", default=60)
DEVICE_OFFLINE_AFTER_SECONDS = env.int("DEVICE_OFFLINE_AFTER_SECONDS", default=300)
CHECKIN_MAX_BODY_BYTES = env.int("CHECKIN_MAX_BODY_BYTES", default=256 * 1024)
# Ed25519 private key (base64 of the 32-byte seed). Empty: generated once into MANIFEST_SIGNING_KEY_PATH.
MANIFEST_SIGNING_KEY = env.str("MANIFEST_SIGNING_KEY", default="")
MANIFEST_SIGNING_KEY_PATH = env.str("MANIFEST_SIGNING_KEY_PATH", default=str(VAR_DIR / "manifest-signing.key"))
MANIFEST_TTL_SECONDS = env.int("MANIFEST_TTL_SECONDS", default=3600)
METRIC_RETENTION_DAYS = env.int("METRIC_RETENTION_DAYS", default=14)
# Install reports, and metric windows written by a check-in itself, commit without waiting for the WAL
# flush (see reports_insert); the flush of buffered windows always waits, as it deletes them from Redis.
TELEMETRY_SYNCHRONOUS_COMMIT = env.bool("TELEMETRY_SYNCHRONOUS_COMMIT", default=False)
# Check-ins whose metric windows wait in Redis for the flush (devices/heartbeats.py). Past this many
# the flush has fallen behind (~2 min of a 100,000-device fleet): check-ins write their windows directly.
METRIC_BUFFER_MAX_CHECKINS = env.int("METRIC_BUFFER_MAX_CHECKINS", default=200_000)
# Check-ins' windows written per statement (and per receipt) by the flush.
METRIC_FLUSH_CHUNK = env.int("METRIC_FLUSH_CHUNK", default=2_000)
