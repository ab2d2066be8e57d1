"""The artifact store: content-addressed blobs plus manifests, on a local folder or S3/MinIO.

An artifact is a set of files; each file is stored once as a blob named by its sha256, however many
artifacts (or imports of the same files) refer to it, and the artifact is named by the sha256 of its
manifest. Files are streamed in and out (never a whole model in memory), and every read is checked
against the manifest: a corrupted file is reported with its path, never served silently.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import io
import os
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import BinaryIO, cast

from portfolio import atomicwrites
from portfolio.registry import safety
from portfolio.registry.hashing import CHUNK, FileEntry, Manifest, sha256_stream

Progress = Callable[[int], None]

# Who is told of each blob and manifest a registration is about to look up or write
# (``portfolio.registry.blobclaims``: so that no delete takes one it counts on); nobody by default.
_claimant: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "artifact_claimant", default=None
)


@contextlib.contextmanager
def claiming(claimant: Callable[[str], None]) -> Iterator[None]:
    token = _claimant.set(claimant)
    try:
        yield
    finally:
        _claimant.reset(token)


def claim(digest: str) -> None:
    """Tell the block's claimant (if any) a blob or manifest is about to be looked up or written."""
    claimant = _claimant.get()
    if claimant is not None:
        claimant(digest)


class CorruptArtifact(Exception):
    """A stored file does not match its manifest entry (or is missing)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class ArtifactStore(ABC):
    """Where blobs and manifests live. Backends implement the five primitives below."""

    scheme: str

    @abstractmethod
    def has_blob(self, sha256: str) -> bool: ...

    @abstractmethod
    def put_blob(self, sha256: str, source: Path, size: int) -> None: ...

    @abstractmethod
    def open_blob(self, sha256: str) -> BinaryIO: ...

    @abstractmethod
    def put_manifest(self, manifest: Manifest) -> None: ...

    @abstractmethod
    def read_manifest(self, artifact_id: str) -> Manifest: ...

    # Deleting: only for what a failed registration wrote and nothing recorded refers to
    # (``portfolio.registry.pending_writes.discard_unrecorded``); a missing object is no error.
    @abstractmethod
    def delete_blob(self, sha256: str) -> None: ...

    @abstractmethod
    def delete_manifest(self, artifact_id: str) -> None: ...

    def download_url(self, sha256: str, headers: dict, expires: timedelta, *, public=False) -> str | None:
        """A time-limited URL to fetch the blob from directly, sent with ``headers``, where the backend has one: at
        the store's own address (only its network's processes reach it), or ``public``, where it was published."""
        return None

    def uri(self, artifact_id: str) -> str:
        return f"{self.scheme}://{self.location}/manifests/{artifact_id}.json"

    @property
    @abstractmethod
    def location(self) -> str: ...


_MISSING = ("NoSuchKey", "NoSuchObject", "NotFound")  # what S3 servers answer for an absent object


def _blob_key(sha256: str) -> str:
    return f"blobs/{sha256[:2]}/{sha256}"


def check_relative_path(path: str) -> str:
    """An artifact's file path: relative, POSIX, no '..', no empty or hidden traversal parts."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or not pure.parts or any(part in ("..", ".", "") for part in pure.parts):
        raise ValueError(f"unsafe path in artifact: {path!r}")
    # Control characters too: a newline cannot be in a URL path (the file's download link), nor in a log line.
    if "\\" in path or any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise ValueError(f"unsafe path in artifact: {path!r}")
    return str(pure)


# --- Local folder backend --------------------------------------------------------------------------
class LocalStore(ArtifactStore):
    """Blobs under ``root/blobs/ab/<sha256>`` (read-only files), manifests under ``root/manifests``."""

    scheme = "file"

    def __init__(self, root: Path):
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "manifests").mkdir(parents=True, exist_ok=True)

    @property
    def location(self) -> str:
        return str(self.root)

    def blob_path(self, sha256: str) -> Path:
        return self.root / _blob_key(sha256)

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).exists()

    def put_blob(self, sha256: str, source: Path, size: int) -> None:
        target = self.blob_path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(handle, "wb") as out, source.open("rb") as src:
                digest, copied = sha256_stream(src, out)
                out.flush()
                os.fsync(out.fileno())
            if digest != sha256 or copied != size:
                raise CorruptArtifact(str(source), "changed while it was being stored")
            os.chmod(temp, 0o444)
            os.replace(temp, target)  # atomic: a reader never sees half a blob
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def open_blob(self, sha256: str) -> BinaryIO:
        return self.blob_path(sha256).open("rb")

    def put_manifest(self, manifest: Manifest) -> None:
        target = self.root / "manifests" / f"{manifest.artifact_id}.json"
        if not target.exists():  # a temporary name of its own: registrations of the same files race
            atomicwrites.replace(target, manifest.to_json().encode())

    def read_manifest(self, artifact_id: str) -> Manifest:
        return Manifest.from_json((self.root / "manifests" / f"{artifact_id}.json").read_text())

    def delete_blob(self, sha256: str) -> None:
        self.blob_path(sha256).unlink(missing_ok=True)

    def delete_manifest(self, artifact_id: str) -> None:
        (self.root / "manifests" / f"{artifact_id}.json").unlink(missing_ok=True)

    def remove_abandoned_writes(self) -> int:
        """Remove the partial files of writers killed mid-write, untouched for ``ABANDONED_AFTER``; how many."""
        cutoff, removed = time.time() - ABANDONED_AFTER.total_seconds(), 0
        for temp in [*self.root.glob("blobs/*/.incoming-*"), *self.root.glob("manifests/.*.part")]:
            with contextlib.suppress(FileNotFoundError):  # finished or removed meanwhile
                if temp.lstat().st_mtime < cutoff:
                    temp.unlink()
                    removed += 1
        return removed


# --- S3 / MinIO backend ----------------------------------------------------------------------------
class S3Store(ArtifactStore):
    """Blobs and manifests as objects in one bucket, through the ``minio`` SDK.

    Uploads are signed with the payload's sha256 (plain HTTP) or carry Content-MD5 (HTTPS), so the server
    itself rejects a body corrupted in transit; each blob also records its sha256 as object metadata, and
    reads are checked against the manifest like every backend's.
    """

    scheme = "s3"

    def __init__(self, client, bucket: str, public_client=None):
        self.client, self.bucket, self.public_client = client, bucket, public_client
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)

    @classmethod
    def from_settings(
        cls,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool,
        region: str | None = None,
        public_client=None,
    ) -> S3Store:
        from minio import Minio

        client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region)
        return cls(client, bucket, public_client)

    @property
    def location(self) -> str:
        return self.bucket

    def has_blob(self, sha256: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, _blob_key(sha256))
        except S3Error as exc:
            if exc.code in _MISSING:
                return False
            raise
        return True

    def put_blob(self, sha256: str, source: Path, size: int) -> None:
        with source.open("rb") as handle:
            checked = _Checked(source, handle, sha256, size)
            if not size:
                checked.check()  # a file of no bytes is never read by the upload: checked before it
            key, metadata = _blob_key(sha256), {"sha256": sha256}
            self.client.put_object(self.bucket, key, checked, size, metadata=metadata, part_size=64 << 20)

    def open_blob(self, sha256: str) -> BinaryIO:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, _blob_key(sha256))
        except S3Error as exc:
            if exc.code in _MISSING:  # reported as a missing file, like LocalStore's
                raise FileNotFoundError(_blob_key(sha256)) from exc
            raise
        return cast(BinaryIO, _S3Stream(response))

    def put_manifest(self, manifest: Manifest) -> None:
        data, key = manifest.to_json().encode(), f"manifests/{manifest.artifact_id}.json"
        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type="application/json")

    def read_manifest(self, artifact_id: str) -> Manifest:
        response = self.client.get_object(self.bucket, f"manifests/{artifact_id}.json")
        with _S3Stream(response) as stream:  # its connection back to the pool
            return Manifest.from_json(stream.read().decode())

    def delete_blob(self, sha256: str) -> None:
        self.client.remove_object(self.bucket, _blob_key(sha256))  # S3 deletes are idempotent

    def delete_manifest(self, artifact_id: str) -> None:
        self.client.remove_object(self.bucket, f"manifests/{artifact_id}.json")

    def download_url(self, sha256: str, headers: dict, expires: timedelta, *, public=False) -> str | None:
        client = self.public_client if public else self.client
        return client and client.presigned_get_object(
            self.bucket,
            _blob_key(sha256),
            expires=expires,
            response_headers={f"response-{name.lower()}": value for name, value in headers.items()},
        )


class _Checked:
    """A file read for an upload through its hash. A file changed since it was hashed is refused at its last
    byte, before the upload is completed: the object never appears, nor replaces a good one."""

    def __init__(self, source: Path, handle: BinaryIO, sha256: str, size: int):
        self.source, self.handle, self.sha256, self.left = source, handle, sha256, size
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self.handle.read(self.left if size < 0 else min(size, self.left))
        self.digest.update(chunk)
        self.left -= len(chunk)
        if not self.left or not chunk:  # the last byte, or the file ended early
            self.check()
        return chunk

    def check(self) -> None:
        if self.left or self.handle.read(1) or self.digest.hexdigest() != self.sha256:
            raise CorruptArtifact(str(self.source), "changed while it was being stored")


class _S3Stream:
    """A file-like view of a streaming GET that returns its connection to the pool on close."""

    def __init__(self, response):
        self._response = response

    def read(self, size: int = -1) -> bytes:
        return self._response.read(size if size and size > 0 else None)

    def close(self) -> None:
        self._response.close()
        self._response.release_conn()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- Backend-independent operations ----------------------------------------------------------------
def iter_files(directory: Path) -> Iterator[tuple[str, Path]]:
    """Every regular file under ``directory`` as (relative POSIX path, path); symlinks are refused."""
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            raise ValueError(f"symbolic link refused: {path.relative_to(directory)}")
        if path.is_file():
            yield check_relative_path(path.relative_to(directory).as_posix()), path


@dataclass
class Written:
    """What one ``store_directory`` call adds to the store: the blobs it uploads (not those already there) and
    its manifest. Told to ``before_write`` before each write, so a caller that must undo a failed
    registration knows what to delete even if it dies halfway."""

    blobs: list[str] = field(default_factory=list)
    manifest: str | None = None

    def as_json(self) -> dict:
        return {"blobs": list(self.blobs), "manifest": self.manifest}

    @classmethod
    def from_json(cls, data: dict) -> Written:
        return cls(blobs=[str(b) for b in data.get("blobs", [])], manifest=data.get("manifest"))


class WriteLog:
    """A ``before_write`` for ``store_directory`` that keeps what it is about to have written (``written``):
    what to delete if the registration then fails."""

    def __init__(self) -> None:
        self.written = Written()

    def __call__(self, so_far: Written) -> None:
        self.written = so_far


def store_directory(
    store: ArtifactStore,
    directory: Path,
    progress: Progress | None = None,
    *,
    before_write: Callable[[Written], None] | None = None,
    rewrite: frozenset[str] = frozenset(),
) -> Manifest:
    """Hash and store every file under ``directory``; blobs already present are not uploaded again, but
    for those in ``rewrite`` (blobs of files found damaged: stored again from this good copy). Each file is
    hashed from a handle opened with no link followed below ``directory`` (``safety.open_folder``): a folder
    swapped for a link once listed is refused, and a file changed since it was hashed fails ``put_blob``."""
    entries: list[FileEntry] = []
    written = Written()
    with safety.open_folder(directory) as top:
        for relative, path in iter_files(directory):
            with safety.open_file_beneath(top, relative) as handle:
                digest, size = sha256_stream(handle, progress=progress)
            claim(digest)
            present = store.has_blob(digest)
            if not present or digest in rewrite:
                if not present and before_write is not None and digest not in written.blobs:
                    written.blobs.append(digest)
                    before_write(written)
                store.put_blob(digest, path, size)
            entries.append(FileEntry(relative, size, digest))
    manifest = Manifest.of(entries)
    if before_write is not None:
        written.manifest = manifest.artifact_id
        before_write(written)
    claim(manifest.artifact_id)
    store.put_manifest(manifest)
    return manifest


def store_bytes(
    store: ArtifactStore, path: str, data: bytes, *, before_write: Callable[[Written], None] | None = None
) -> FileEntry:
    """One small file made in memory (a rewritten config) stored as a blob; its manifest entry.
    ``before_write`` is told of the blob before it is written (as ``store_directory``'s)."""
    digest = hashlib.sha256(data).hexdigest()
    claim(digest)
    if not store.has_blob(digest):
        if before_write is not None:
            before_write(Written(blobs=[digest]))
        handle, temp = tempfile.mkstemp(prefix=".bytes-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            store.put_blob(digest, Path(temp), len(data))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
    return FileEntry(check_relative_path(path), len(data), digest)


def copy_verified(store: ArtifactStore, entry: FileEntry, out: BinaryIO | None) -> None:
    """Stream one file out of the store (into ``out``, or only hashed), failing (naming the path) if it is not
    what the manifest says."""
    try:
        source = store.open_blob(entry.sha256)
    except (FileNotFoundError, OSError) as exc:
        raise CorruptArtifact(entry.path, f"missing from the store ({exc.__class__.__name__})") from exc
    with source:
        digest, size = sha256_stream(source, out)
    if size != entry.size or digest != entry.sha256:
        raise CorruptArtifact(
            entry.path, f"sha256 mismatch (stored {digest[:12]}…, manifest {entry.sha256[:12]}…)"
        )


def verify(store: ArtifactStore, manifest: Manifest) -> list[CorruptArtifact]:
    """Re-hash every file of an artifact; return the problems (empty when healthy)."""
    problems = []
    for entry in manifest.files:
        try:
            copy_verified(store, entry, None)
        except CorruptArtifact as exc:
            problems.append(exc)
    return problems


def materialize(store: ArtifactStore, manifest: Manifest, destination: Path) -> Path:
    """Write the artifact's files under ``destination`` (for engines and trainers), verified.

    Written to a sibling temporary folder and renamed into place, so a half-written copy is never used;
    a destination that already exists is taken as complete, one written meanwhile by a concurrent copy too.
    """
    _remove_abandoned_copies(destination)
    if destination.exists():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}-"))
    try:
        for entry in manifest.files:
            target = staging / check_relative_path(entry.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as out:
                copy_verified(store, entry, out)
        try:
            os.replace(staging, destination)
        except OSError:
            if not destination.exists():
                raise
            # Another process (a second engine or trainer of the same artifact) renamed its copy first.
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination


# A temporary copy untouched for this long was left by a process killed mid-copy (no copy of a live one
# goes an hour without a byte written): it is removed, or every retry would leave one more, never pruned.
ABANDONED_AFTER = timedelta(hours=1)


def _remove_abandoned_copies(destination: Path) -> None:
    cutoff = time.time() - ABANDONED_AFTER.total_seconds()
    for staging in destination.parent.glob(f".{destination.name}-*"):
        try:
            # Writes touch the file written, not its folder: the newest change anywhere in the copy counts.
            touched = max(p.lstat().st_mtime for p in [staging, *staging.rglob("*")])
        except OSError:
            continue  # removed meanwhile (renamed into place, or pruned by another process)
        if touched < cutoff:
            shutil.rmtree(staging, ignore_errors=True)


def read_text(store: ArtifactStore, manifest: Manifest, path: str, limit: int = 4 * CHUNK) -> str | None:
    """A small text file of an artifact (a config, a model card), verified; None if absent."""
    entry = manifest.get(path)
    if entry is None or entry.size > limit:
        return None
    buffer = io.BytesIO()
    copy_verified(store, entry, buffer)
    return buffer.getvalue().decode("utf-8", errors="replace")
