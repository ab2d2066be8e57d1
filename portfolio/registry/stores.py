"""The configured artifact store (one per process)."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

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
            public_client=_public_client(),
        )
    return LocalStore(settings.ARTIFACT_ROOT)


def _public_client():
    """MinIO at the address an operator published it at for browsers (``PORTFOLIO_MINIO_PUBLIC_URL``), to
    presign downloads for; None where there is none, and files are streamed through the platform instead.

    ``MINIO_ENDPOINT`` is an address of the platform's own network: a URL presigned for it resolves in no
    browser, and one cannot be rewritten for another host (the signature covers it). The region is fixed, as
    MinIO's own default unless set, so presigning asks nothing of a server the platform may not reach."""
    url = settings.MINIO_PUBLIC_URL
    if not url:
        return None
    parts = urlsplit(url)
    extra = parts.username or parts.path.strip("/") or parts.query or parts.fragment
    if parts.scheme not in ("http", "https") or not parts.hostname or extra:
        raise ImproperlyConfigured(
            f"PORTFOLIO_MINIO_PUBLIC_URL={url!r} is not valid: expected the object store's address as browsers "
            "reach it, such as https://objects.example.com (no path, query or credentials)."
        )
    from minio import Minio

    return Minio(
        parts.netloc,
        access_key=settings.MINIO_ACCESS_KEY,
        secret_key=settings.MINIO_SECRET_KEY,
        secure=parts.scheme == "https",
        region=settings.MINIO_REGION or "us-east-1",
    )
