"""The configured artifact store (one per process)."""

from __future__ import annotations

from functools import lru_cache

from django.conf import settings

from portfolio.registry.storage import ArtifactStore, LocalStore, S3Store


@lru_cache(maxsize=1)
def default_store() -> ArtifactStore:
    if settings.ARTIFACT_STORE == "s3":
        return S3Store.from_settings(
            endpoint=settings.MINIO_ENDPOINT,
            access_key=settings.MINIO_ACCESS_KEY,
            secret_key=settings.MINIO_SECRET_KEY,
            bucket=settings.MINIO_BUCKET,
            secure=settings.MINIO_SECURE,
            region=settings.MINIO_REGION,
        )
    return LocalStore(settings.ARTIFACT_ROOT)
