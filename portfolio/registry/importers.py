"""Fetching a version's files into a local folder, one function per source.

Each importer returns a folder holding exactly the files to store. Sources are untrusted: paths must
lie under the import roots, archives are extracted safely, and what is fetched from a hub is limited
to data files (weights as safetensors, configs, tokenizers) unless an admin allowed more.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings

from portfolio.registry import chat_templates, safety
from portfolio.registry.choices import Source
from portfolio.registry.hashing import CHUNK
from portfolio.registry.models import ModelVersion
from portfolio.registry.storage import iter_files

logger = logging.getLogger(__name__)
Report = Callable[[int, str], None]  # (percent, what is happening)

SAFE_PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.md", "LICENSE*"]
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth"]
CODE_PATTERNS = ["*.py"]


class ImportFailed(Exception):
    """An import that cannot succeed, with a reason a person can act on."""


def fetch(version: ModelVersion, workdir: Path, report: Report) -> Path:
    folder = _fetch_source(version, workdir, report)
    template = version.import_options.get("chat_template")
    if template:
        # Written into this import's own copy: a server folder is the engineer's, not ours to change.
        if workdir.resolve() not in folder.resolve().parents:
            copy = workdir / "with-chat-template"
            _link_tree(folder, copy)
            folder = copy
        chat_templates.write_into(folder, template)
    return folder


def _fetch_source(version: ModelVersion, workdir: Path, report: Report) -> Path:
    source = version.source
    if source == Source.HUB:
        return fetch_hub(version, workdir, report)
    if source == Source.LOCAL:
        return fetch_local(version, workdir, report)
    if source == Source.GGUF:
        return convert_gguf(safety.resolve_import_path(version.source_ref), workdir, report)
    if source == Source.UPLOAD:
        return fetch_upload(version, workdir, report)
    raise ImportFailed(f"{source} versions are not imported; they are registered by their job.")


def parse_hub_ref(ref: str) -> tuple[str, str | None]:
    """``org/name@revision`` -> (repo id, revision)."""
    repo, _, revision = ref.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise ImportFailed(f"{ref!r} is not a Hub repository reference like 'org/name@revision'.")
    return repo, revision or None


# The public Hub's hosts: an HF_ENDPOINT naming one of them is no mirror.
PUBLIC_HUB_HOSTS = ("huggingface.co", "hf.co")


def public_hub_refusal() -> str | None:
    """Why a production import may not go to the public Hub, or None. Its requests tell huggingface.co the
    model names being evaluated and, in the user agent, this platform's Python and torch versions; in
    production they go only to a mirror (HF_ENDPOINT), to none (HF_HUB_OFFLINE: the cache), or where an
    admin allowed the public Hub (PORTFOLIO_HUB_PUBLIC). Asked when an import is started and again by the
    worker that would fetch it (a version queued before, or a worker configured otherwise)."""
    from huggingface_hub import constants

    if not settings.PRODUCTION or settings.HUB_PUBLIC or constants.HF_HUB_OFFLINE:
        return None
    host = (urlsplit(constants.ENDPOINT).hostname or "").lower().rstrip(".")
    if host and not any(host == public or host.endswith("." + public) for public in PUBLIC_HUB_HOSTS):
        return None
    return (
        "Imports from the Hub would go to the public huggingface.co: set HF_ENDPOINT to the company's Hub "
        "mirror (or HF_HUB_OFFLINE=1 to import from the cache), or PORTFOLIO_HUB_PUBLIC=true if an admin "
        "allows the public Hub."
    )


def fetch_hub(version: ModelVersion, workdir: Path, report: Report) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo, revision = parse_hub_ref(version.source_ref)
    if refused := public_hub_refusal():
        raise ImportFailed(refused + " Nothing was downloaded.")
    patterns = list(SAFE_PATTERNS)
    if version.import_options.get("allow_pickle"):
        patterns += PICKLE_PATTERNS
    if version.import_options.get("trust_remote_code"):
        patterns += CODE_PATTERNS
    report(5, f"fetching {repo} from the Hub mirror")
    listed = hub_listing(repo, revision, patterns)
    if listed is not None and listed[0] > settings.MAX_IMPORT_BYTES:
        raise ImportFailed(
            f"{repo}@{revision or 'main'} holds {listed[0]} bytes of files this import would take, over the "
            f"import limit of {settings.MAX_IMPORT_BYTES}; nothing was downloaded."
        )
    if listed is not None and listed[1] > safety.MAX_IMPORT_FILES:
        raise ImportFailed(
            f"{repo}@{revision or 'main'} holds {listed[1]} files this import would take; a version holds at "
            f"most {safety.MAX_IMPORT_FILES:,}. Nothing was downloaded."
        )
    try:
        snapshot = Path(
            snapshot_download(
                repo, revision=revision, allow_patterns=patterns, cache_dir=settings.HF_CACHE_DIR
            )
        )
    except RepositoryNotFoundError as exc:
        raise ImportFailed(f"Repository {repo} was not found on the Hub mirror (or needs a token).") from exc
    except LocalEntryNotFoundError as exc:
        raise ImportFailed(
            f"{repo}@{revision or 'main'} is not in the local Hub cache and the Hub cannot be reached "
            "(offline mode or no network): pre-load the cache or set HF_ENDPOINT to an internal mirror."
        ) from exc
    except HfHubHTTPError as exc:
        raise ImportFailed(f"The Hub mirror refused the download: {exc}") from exc
    # The cache's snapshot folder holds links into its blob store; copy the real files out (hard links
    # where possible) and refuse any link that points outside this repository's cache folder.
    repo_cache = snapshot.parent.parent.resolve()
    out = workdir / "snapshot"
    for path in sorted(snapshot.rglob("*")):
        if path.is_dir():
            continue
        real = path.resolve()
        if repo_cache not in real.parents:
            raise ImportFailed(f"{path.relative_to(snapshot)} points outside the Hub cache; refused.")
        target = out / path.relative_to(snapshot)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(real, target)
        except OSError:
            shutil.copyfile(real, target)
    if not out.exists():
        raise ImportFailed(f"{repo}@{revision or 'main'} has no files this import may take.")
    return out


def hub_listing(repo: str, revision: str | None, patterns: list[str]) -> tuple[int, int] | None:
    """The bytes and the number of the files of ``repo`` the patterns take, from the Hub's listing of the
    revision, so that a repository over the import limits is refused before its download fills the disk
    (and the Hub cache, which keeps what it downloaded). None where the listing cannot be had (offline, the
    mirror unreachable or refusing): the download then decides, from the cache or with its own error, and
    what it fetched is measured after it (``importing._import``)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    try:
        files = [
            entry
            for entry in HfApi().list_repo_tree(repo, revision=revision, recursive=True)
            if isinstance(entry, RepoFile)
        ]
    except Exception as exc:  # whatever keeps the listing from us, the download meets it and says so
        logger.info("import: no file listing of %s@%s from the Hub (%r)", repo, revision or "main", exc)
        return None
    taken = list(filter_repo_objects(files, allow_patterns=patterns, key=_path))
    return sum(entry.size or 0 for entry in taken), len(taken)


def _path(entry) -> str:
    return entry.path


def fetch_local(version: ModelVersion, workdir: Path, report: Report) -> Path:
    path = safety.resolve_import_path(version.source_ref)
    with safety.open_unlinked(path) as opened:  # what is there, found with no link followed
        mode = os.fstat(opened).st_mode
    if stat.S_ISREG(mode) and path.suffix == ".gguf":
        return convert_gguf(path, workdir, report)
    if not stat.S_ISDIR(mode):
        raise ImportFailed(f"{path} is neither a model folder nor a .gguf file.")
    safety.refuse_links_inside(path)
    report(5, f"reading {path}")
    return path  # read in place; storing opens it again with no link followed (``safety.open_folder``)


def _link_tree(source: Path, target: Path) -> None:
    """The files under ``source`` as hard links under ``target`` (copies where a link cannot be made), each
    opened with no link followed below ``source`` (nor in its path, under an import root), so that a folder
    swapped for a link once listed is refused, not followed."""
    with safety.open_folder(source) as top:
        for relative, _ in iter_files(source):
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            with safety.open_file_beneath(top, relative) as handle:
                try:  # the very file opened, through its descriptor
                    os.link(f"/proc/self/fd/{handle.fileno()}", destination)
                except OSError:
                    with destination.open("xb") as out:
                        shutil.copyfileobj(handle, out, CHUNK)


def _cache(out: Path, cached: Path) -> None:
    """Keeps a conversion: made whole beside the cache's entry, then renamed into place, so that another
    import reusing it never copies a tree half written (one whose files were being deleted, or not all
    there yet). Of two conversions of one GGUF at once the first renamed stays."""
    incoming = cached.with_name(f"{cached.name}.incoming-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        _link_tree(out, incoming)
        (incoming / ".complete").touch()
        if cached.exists() and not (cached / ".complete").exists():
            shutil.rmtree(cached, ignore_errors=True)  # a run killed before this change wrote it in place
        with contextlib.suppress(OSError):  # another conversion of the same file is in place already
            incoming.rename(cached)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


def conversion_entry(digest: str) -> Path:
    """Where this machine keeps the conversion of the GGUF whose sha256 is ``digest``. The same GGUF converts
    to the same files: one conversion per content hash, and per converter version (an older converter's
    output must not be reused)."""
    from portfolio.registry.gguf_convert import CONVERTER_VERSION

    return Path(settings.GGUF_CONVERSION_CACHE) / f"{digest}-v{CONVERTER_VERSION}"


def delete_conversions(digest: str) -> None:
    """Delete this machine's conversions of the GGUF whose sha256 is ``digest``, by every converter version
    (and the unversioned key the first used), each renamed away first: an import reusing it never copies a
    tree half deleted, which still has its ``.complete``. Conversions being written (``.incoming-``) are
    another import's, which will hold the GGUF again."""
    cache = Path(settings.GGUF_CONVERSION_CACHE)
    if not cache.is_dir():
        return
    for entry in cache.iterdir():
        name = entry.name
        if name == digest or (name.startswith(f"{digest}-v") and name.removeprefix(f"{digest}-v").isdigit()):
            staging = entry.with_name(f"{name}.deleting-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            with contextlib.suppress(OSError):  # deleted meanwhile by another purge of the same GGUF
                entry.rename(staging)
                shutil.rmtree(staging, ignore_errors=True)
        elif name.startswith(digest) and ".deleting-" in name:
            shutil.rmtree(entry, ignore_errors=True)  # what a purge killed while deleting left


def convert_gguf(gguf: Path, workdir: Path, report: Report) -> Path:
    if gguf.suffix != ".gguf":
        raise ImportFailed(f"{gguf.name} is not a .gguf file.")
    report(5, f"copying {gguf.name}")
    private, digest = _private_copy(gguf, workdir / "gguf")
    out = workdir / "converted"
    cached = conversion_entry(digest)
    if (cached / ".complete").exists():
        report(40, f"reusing the conversion of {gguf.name}")
        _link_tree(cached, out)
        (out / ".complete").unlink(missing_ok=True)
    else:
        report(10, f"converting {gguf.name} to safetensors")
        result = subprocess.run(
            [sys.executable, "-m", "portfolio.registry.gguf_convert", str(private), str(out)],
            capture_output=True,
            text=True,
            timeout=settings.GGUF_CONVERT_TIMEOUT,
        )
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-5:])
            raise ImportFailed(
                f"Could not convert {gguf.name}: {tail or 'converter exited ' + str(result.returncode)}"
            )
        _cache(out, cached)
    original = out / "original"
    original.mkdir()
    private.rename(original / gguf.name)  # the copy hashed and converted is the one stored
    report(50, "converted; storing")
    return out


def _private_copy(gguf: Path, folder: Path) -> tuple[Path, str]:
    """``gguf`` copied into this import's own ``folder``, and the sha256 of the copy, from which alone the
    import goes on (hashed, converted, cached under that hash, stored). The GGUF's folder is the engineers' to
    write: between two reads of the file (the converter's comes up to half an hour after the hash) it could be
    swapped for another GGUF, whose conversion would be cached under the first one's hash for every team's
    imports of it, or for a link to a secret of the worker's, stored as the version's original. It is opened
    once, with no link followed at any part of its path (as ``safety.resolve_import_path`` refuses them)."""
    with safety.open_unlinked(gguf) as source:
        info = os.fstat(source)
        if not stat.S_ISREG(info.st_mode):
            raise ImportFailed(f"{gguf.name} is not a regular file.")
        _refuse_over_limit(gguf.name, info.st_size)
        folder.mkdir()
        copy, digest, size = folder / gguf.name, hashlib.sha256(), 0
        with copy.open("xb") as sink:
            while chunk := os.read(source, CHUNK):
                size += len(chunk)
                _refuse_over_limit(gguf.name, size)  # it grew while being copied
                digest.update(chunk)
                sink.write(chunk)
    return copy, digest.hexdigest()


def _refuse_over_limit(name: str, size: int) -> None:
    # The version keeps the GGUF itself beside its conversion: over the limit before converting it
    # (which takes up to half an hour, and writes several times the GGUF's size).
    if size > settings.MAX_IMPORT_BYTES:
        raise ImportFailed(
            f"{name} is {size} bytes or more, over the import limit of {settings.MAX_IMPORT_BYTES}; not converted."
        )


def fetch_upload(version: ModelVersion, workdir: Path, report: Report) -> Path:
    upload = Path(version.import_options.get("upload_path", ""))
    uploads_dir = (Path(settings.DATA_DIR) / "uploads").resolve()
    if uploads_dir not in upload.resolve().parents or not upload.is_file():
        raise ImportFailed("The uploaded archive is gone; upload it again.")
    out = workdir / "extracted"
    out.mkdir()
    report(10, "extracting the archive")
    safety.safe_extract(upload, out)
    # Archives often wrap the files in one top folder; take its content as the artifact.
    children = [p for p in out.iterdir()]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return out
