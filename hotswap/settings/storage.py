"""Artifact storage: S3 (AWS, MinIO, SeaweedFS) when S3_BUCKET is set, else the local filesystem."""

from botocore.config import Config

from hotswap.settings.env import VAR_DIR, env

S3_BUCKET = env.str("S3_BUCKET", default="")
# The largest artifact accepted, by either upload path (quantised language models reach several GB).
ARTIFACT_MAX_BYTES = env.int("ARTIFACT_MAX_BYTES", default=20 * 1024**3)
ARTIFACT_URL_EXPIRY_SECONDS = env.int("ARTIFACT_URL_EXPIRY_SECONDS", default=900)
# S3 multipart: part size and how many parts go up at once while the request streams in.
# Memory per upload is about (concurrency + 2) parts, whatever the artifact's size: 5 MiB (S3's
# minimum part) x 4 in flight measured fastest on 2 cores (bench/upload.py) at ~30 MB per upload.
ARTIFACT_PART_BYTES = env.int("ARTIFACT_PART_BYTES", default=5 * 1024**2)
ARTIFACT_UPLOAD_CONCURRENCY = env.int("ARTIFACT_UPLOAD_CONCURRENCY", default=4)
# Every S3 call, an abort included, gives up after about S3_MAX_ATTEMPTS x (connect + read timeout):
# a frozen S3 answers 503 in that time, never after minutes (models_app/storage.py applies them).
S3_CONNECT_TIMEOUT = env.int("S3_CONNECT_TIMEOUT", default=5)
S3_READ_TIMEOUT = env.int("S3_READ_TIMEOUT", default=60)
S3_MAX_ATTEMPTS = env.int("S3_MAX_ATTEMPTS", default=3)
# Multipart uploads still open after this long were left by a crashed or cut-off upload and are aborted
# (models_app.tasks.artifact_abandoned_uploads_cleanup, every 10 minutes: gone within the hour).
ARTIFACT_UPLOAD_STALE_MINUTES = env.int("ARTIFACT_UPLOAD_STALE_MINUTES", default=40)
# Upload sessions (POST /api/v1/uploads): the client sends parts straight to S3 (or, on local storage, to the
# API) and can resume within the session's lifetime. Parts are this size (raised for files that would need
# more than S3's 10,000 parts; S3 needs at least 5 MiB); part URLs stay valid this long; an open session
# expires this long after it started and a beat task then aborts it and its parts.
UPLOAD_PART_BYTES = env.int("UPLOAD_PART_BYTES", default=64 * 1024**2)
UPLOAD_PART_URL_EXPIRY_SECONDS = env.int("UPLOAD_PART_URL_EXPIRY_SECONDS", default=3600)
UPLOAD_SESSION_HOURS = env.float("UPLOAD_SESSION_HOURS", default=24)
# Integrity scrub (models_app/scrub.py, every 10 minutes): re-hashes stored artifacts, oldest-scrubbed first,
# at most this many bytes per run (~7 s of S3 reads at 300 MB/s), each again after the interval.
ARTIFACT_SCRUB_BYTES_PER_RUN = env.int("ARTIFACT_SCRUB_BYTES_PER_RUN", default=2 * 1024**3)
ARTIFACT_SCRUB_INTERVAL_HOURS = env.float("ARTIFACT_SCRUB_INTERVAL_HOURS", default=24)

if S3_BUCKET:
    _artifacts = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": S3_BUCKET,
            "endpoint_url": env.str("S3_ENDPOINT_URL", default="") or None,
            "access_key": env.str("S3_ACCESS_KEY_ID", default="") or None,
            "secret_key": env.str("S3_SECRET_ACCESS_KEY", default="") or None,
            "region_name": env.str("S3_REGION", default="us-east-1"),
            "addressing_style": env.str("S3_ADDRESSING_STYLE", default="path"),
            "signature_version": "s3v4",
            "querystring_expire": ARTIFACT_URL_EXPIRY_SECONDS,
            "file_overwrite": False,
            "default_acl": None,
            # Fail fast when S3 is down: the client gets a 503 in seconds, not after minutes of retries.
            "client_config": Config(
                connect_timeout=S3_CONNECT_TIMEOUT, read_timeout=S3_READ_TIMEOUT,
                # total_max_attempts counts the first try; botocore's "max_attempts" would add one to it.
                retries={"total_max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
                s3={"addressing_style": env.str("S3_ADDRESSING_STYLE", default="path"),
                    "payload_signing_enabled": env.bool("S3_PAYLOAD_SIGNING", default=False)},
                signature_version="s3v4",
                # The upload hashes every byte once for the artifact's SHA-256; hashing each part again
                # for SigV4 and CRC32 would cost a core on small machines. TLS protects parts in transit;
                # validation re-reads the stored object and checks its SHA-256 (S3_PART_CHECKSUMS=true
                # restores per-part CRC32 for untrusted plain-HTTP links).
                request_checksum_calculation="when_supported" if env.bool("S3_PART_CHECKSUMS", default=False)
                else "when_required",
            ),
        },
    }
else:
    _artifacts = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": env.str("ARTIFACT_ROOT", default=str(VAR_DIR / "artifacts"))},
    }

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
    "artifacts": _artifacts,
}
