"""Chat templates an engineer supplies: checked, then written where engines read them.

A chat template is the Jinja program that turns a conversation into a model's prompt; without one an
engine refuses every chat call. Engines (vLLM, through transformers) compile it in jinja2's
``ImmutableSandboxedEnvironment`` with transformers' options and extensions, so a supplied template is
accepted only if it compiles in that same environment, within a size bound. It is never *rendered*
here: rendering runs the template, and a hostile one (nested loops) would burn the web process's CPU.

Versions are immutable, so a template never changes a version's files: it goes into the files of a new
import, or of a new version derived from an existing one (``derive_manifest``), and transformers reads it
from ``tokenizer_config.json``. Files that would take precedence (``overrides``) go.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from portfolio.errors import Invalid
from portfolio.registry.hashing import Manifest
from portfolio.registry.storage import ArtifactStore, WriteLog, Written, claim, read_text, store_bytes

# The largest real templates (tool calling, reasoning) are around 20 KB.
MAX_CHAT_TEMPLATE_BYTES = 64 * 1024
# tokenizer_config.json of large vocabularies lists every added token: a few MB at most.
MAX_TOKENIZER_CONFIG_BYTES = 16 * 1024 * 1024
TOKENIZER_CONFIG = "tokenizer_config.json"
# transformers reads these in preference to tokenizer_config.json's "chat_template": the template file, a
# processor's (vision models), and named templates, which make the template a set with no default.
OVERRIDING_FILES = ("chat_template.jinja", "chat_template.json")
NAMED_TEMPLATES = "additional_chat_templates/"


def overrides(path: str) -> bool:
    """Whether a model's file would take the place of a template set in its tokenizer_config.json."""
    return path in OVERRIDING_FILES or path.startswith(NAMED_TEMPLATES)


def _environment():
    """transformers' chat-template environment (``_compile_jinja_template``), for compiling only."""
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """transformers' ``{% generation %}`` block (it marks the assistant's tokens); parsed, not tracked."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    return ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, "jinja2.ext.loopcontrols"]
    )


def validate(template: str) -> str:
    """The template, if engines can compile it; else ``Invalid`` naming the problem and its line."""
    from jinja2 import TemplateError, TemplateSyntaxError

    if not isinstance(template, str) or not template.strip():
        raise Invalid("chat_template: Give the template's text.", fields={"chat_template": ["Required."]})
    try:
        size = len(template.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON): no file or database takes it
        message = "The template is not valid Unicode text."
        raise Invalid(f"chat_template: {message}", fields={"chat_template": [message]}) from None
    if size > MAX_CHAT_TEMPLATE_BYTES:
        message = f"At most {MAX_CHAT_TEMPLATE_BYTES} bytes (this one has {size})."
        raise Invalid(f"chat_template: {message}", fields={"chat_template": [message]})
    if "\x00" in template:
        message = "A template cannot contain NUL characters."
        raise Invalid(f"chat_template: {message}", fields={"chat_template": [message]})
    try:
        _environment().from_string(template)
    except TemplateSyntaxError as exc:
        message = f"Not a valid Jinja template: {exc.message} (line {exc.lineno})."
        raise Invalid(f"chat_template: {message}", fields={"chat_template": [message]}) from None
    except (TemplateError, RecursionError) as exc:
        message = f"Not a valid Jinja template: {exc.__class__.__name__}: {str(exc)[:200]}."
        raise Invalid(f"chat_template: {message}", fields={"chat_template": [message]}) from None
    return template


def fingerprint(template: str) -> dict:
    """What the audit log keeps of a template: its digest and size (the text is in the version's files)."""
    data = template.encode("utf-8")
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _with_template(raw: str | None, template: str) -> bytes:
    try:
        config = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise Invalid(
            f"{TOKENIZER_CONFIG} is not valid JSON ({exc}); fix the files and import them again."
        ) from None
    if not isinstance(config, dict):
        raise Invalid(f"{TOKENIZER_CONFIG} is not a JSON object; fix the files and import them again.")
    config["chat_template"] = template
    return (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _too_large() -> Invalid:
    return Invalid(
        f"{TOKENIZER_CONFIG} is larger than {MAX_TOKENIZER_CONFIG_BYTES} bytes; it cannot be rewritten."
    )


def write_into(folder: Path, template: str) -> None:
    """Put ``template`` into the tokenizer of the files in ``folder`` (an import's own working copy).

    Files there may be hard links into a cache (the Hub's, the GGUF conversions'): each file is replaced
    by a new one, never written through."""
    config_path = folder / TOKENIZER_CONFIG
    raw = None
    if config_path.exists():
        if config_path.stat().st_size > MAX_TOKENIZER_CONFIG_BYTES:
            raise _too_large()
        raw = config_path.read_text(encoding="utf-8", errors="replace")
    data = _with_template(raw, template)
    handle, temp = tempfile.mkstemp(dir=folder, prefix=".tokenizer_config-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temp, config_path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    for name in OVERRIDING_FILES:
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(
        folder / NAMED_TEMPLATES, ignore_errors=True
    )  # links into a cache are unlinked, not emptied


def derive_manifest(
    store: ArtifactStore, manifest: Manifest, template: str, log: WriteLog | None = None
) -> Manifest:
    """The files of ``manifest`` with ``template`` in their tokenizer, stored: only the rewritten
    tokenizer_config.json is a new blob, every other file is shared with the original. ``log`` is told of
    what is written before it is (``pending_writes``), for a registration that fails to delete it."""
    entry = manifest.get(TOKENIZER_CONFIG)
    if entry is not None and entry.size > MAX_TOKENIZER_CONFIG_BYTES:
        raise _too_large()
    raw = read_text(store, manifest, TOKENIZER_CONFIG, limit=MAX_TOKENIZER_CONFIG_BYTES) if entry else None
    config = store_bytes(store, TOKENIZER_CONFIG, _with_template(raw, template), before_write=log)
    kept = [f for f in manifest.files if f.path != TOKENIZER_CONFIG and not overrides(f.path)]
    derived = Manifest.of([*kept, config])
    claim(derived.artifact_id)
    if log is not None:
        log(Written(blobs=list(log.written.blobs), manifest=derived.artifact_id))
    store.put_manifest(derived)
    return derived
