"""Artifact storage: S3 (AWS, MinIO, SeaweedFS) when S3_BUCKET is set, else the local filesystem."""

from hotswap.settings.env import VAR_DIR, env

S3_BUCKET = env.str("S3_BUCKET", default="")
ARTIFACT_MAX_BYTES = env.int("ARTIFACT_MAX_BYTES", default=2 * 1024**3)
ARTIFACT_URL_EXPIRY_SECONDS = env.int("ARTIFACT_URL_EXPIRY_SECONDS", default=900)
# S3 multipart: part size and how many parts go up at once while the request streams in.
ARTIFACT_PART_BYTES = env.int("ARTIFACT_PART_BYTES", default=16 * 1024**2)
ARTIFACT_UPLOAD_CONCURRENCY = env.int("ARTIFACT_UPLOAD_CONCURRENCY", default=4)

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
