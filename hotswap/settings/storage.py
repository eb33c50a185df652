"""Artifact storage: S3 (AWS, MinIO, SeaweedFS) when S3_BUCKET is set, else the local filesystem."""

from botocore.config import Config

from hotswap.settings.env import VAR_DIR, env

S3_BUCKET = env.str("S3_BUCKET", default="")
ARTIFACT_MAX_BYTES = env.int("ARTIFACT_MAX_BYTES", default=2 * 1024**3)
ARTIFACT_URL_EXPIRY_SECONDS = env.int("ARTIFACT_URL_EXPIRY_SECONDS", default=900)
# S3 multipart: part size and how many parts go up at once while the request streams in.
# Memory per upload is about (concurrency + 1) parts; 8 MiB x 3 keeps a 2 GB upload under ~40 MB.
ARTIFACT_PART_BYTES = env.int("ARTIFACT_PART_BYTES", default=8 * 1024**2)
ARTIFACT_UPLOAD_CONCURRENCY = env.int("ARTIFACT_UPLOAD_CONCURRENCY", default=3)

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
                connect_timeout=env.int("S3_CONNECT_TIMEOUT", default=5),
                read_timeout=env.int("S3_READ_TIMEOUT", default=60),
                retries={"max_attempts": env.int("S3_MAX_ATTEMPTS", default=3), "mode": "standard"},
                s3={"addressing_style": env.str("S3_ADDRESSING_STYLE", default="path")},
                signature_version="s3v4",
                # We verify SHA-256 end to end ourselves; per-part CRC trailers cost memory and CPU.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
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
