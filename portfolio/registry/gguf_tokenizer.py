"""The tokenizer a GGUF file describes, carried whole into a transformers tokenizer folder.

transformers rebuilds a GGUF's vocabulary but drops the flags that say how llama.cpp uses it: whether a
prompt starts with BOS (``add_bos_token``, which Gemma needs: without it its completions degenerate) or
ends with EOS, whether a space is prefixed to the text, the separator, mask and end-of-turn tokens, and
the named chat templates. Engines loading the converted folder must encode a prompt to exactly the ids
llama.cpp would, so every flag the file states is applied here; flags the file leaves out keep
transformers' defaults. Runs inside the converter process (torch and transformers are loaded there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# GGUF key (after "tokenizer.ggml.") -> the transformers special-token attribute it names.
SPECIAL_TOKEN_IDS = {
    "bos_token_id": "bos_token",
    "eos_token_id": "eos_token",
    "unknown_token_id": "unk_token",
    "padding_token_id": "pad_token",
    "seperator_token_id": "sep_token",  # sic: llama.cpp's spelling
    "mask_token_id": "mask_token",
}
# Tokens that end a generation in llama.cpp (its "end of generation" set), beyond EOS itself.
STOP_TOKEN_IDS = ("eos_token_id", "eot_token_id", "eom_token_id")


@dataclass
class TokenizerFlags:
    """What a GGUF states about its tokenizer beyond the vocabulary (None: the file does not say)."""

    add_bos_token: bool | None = None
    add_eos_token: bool | None = None
    add_space_prefix: bool | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # attribute -> token id
    stop_ids: list[int] = field(default_factory=list)
    chat_templates: dict[str, str] = field(default_factory=dict)  # "default" and named ones


def read_flags(gguf_path: Path) -> TokenizerFlags:
    """The tokenizer flags of a GGUF file, from its metadata alone (no tensor is read)."""
    from transformers.integrations.gguf import read_gguf_metadata

    metadata, _ = read_gguf_metadata(str(gguf_path))

    def flag(key: str) -> bool | None:
        value = metadata.get(f"tokenizer.ggml.{key}")
        return None if value is None else bool(value)

    flags = TokenizerFlags(
        add_bos_token=flag("add_bos_token"),
        add_eos_token=flag("add_eos_token"),
        add_space_prefix=flag("add_space_prefix"),
    )
    for key, attribute in SPECIAL_TOKEN_IDS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if isinstance(token_id, int) and token_id >= 0:
            flags.special_ids[attribute] = token_id
    for key in STOP_TOKEN_IDS:
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if isinstance(token_id, int) and token_id >= 0 and token_id not in flags.stop_ids:
            flags.stop_ids.append(token_id)
    default = metadata.get("tokenizer.chat_template")
    if isinstance(default, str) and default.strip():
        flags.chat_templates["default"] = default
    prefix = "tokenizer.chat_template."
    for key, value in sorted(metadata.items()):
        if key.startswith(prefix) and isinstance(value, str) and value.strip():
            flags.chat_templates[key.removeprefix(prefix)] = value
    return flags


def _set_space_prefix(tokenizer, add_space_prefix: bool) -> None:
    """A sentencepiece vocabulary prefixes a space through its Metaspace pre-tokenizer (and strips it
    again when decoding); set both the way the file says."""
    from tokenizers import Tokenizer

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    pre = state.get("pre_tokenizer") or {}
    if pre.get("type") != "Metaspace":
        return  # the prefix is not this tokenizer's to switch (byte-level vocabularies have none)
    pre["prepend_scheme"] = "first" if add_space_prefix else "never"
    decoder = state.get("decoder") or {}
    if decoder.get("type") == "Sequence":
        steps = [step for step in decoder["decoders"] if not _strips_prefix(step)]
        if add_space_prefix:
            steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        decoder["decoders"] = steps
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(state))


def _strips_prefix(step: dict) -> bool:
    return step.get("type") == "Strip" and step.get("content") == " " and step.get("start") == 1


def apply_flags(tokenizer, flags: TokenizerFlags) -> None:
    """Make ``tokenizer`` (loaded from the GGUF by transformers) behave as the file says."""
    for attribute, token_id in flags.special_ids.items():
        if token_id < len(tokenizer):
            setattr(tokenizer, attribute, tokenizer.convert_ids_to_tokens(token_id))
    if flags.add_space_prefix is not None:
        _set_space_prefix(tokenizer, flags.add_space_prefix)
    if flags.add_bos_token is not None or flags.add_eos_token is not None:
        if flags.add_bos_token is not None:
            tokenizer.add_bos_token = flags.add_bos_token
        if flags.add_eos_token is not None:
            tokenizer.add_eos_token = flags.add_eos_token
        # The post-processor is what adds BOS/EOS when a prompt is encoded, in transformers and in vLLM.
        tokenizer.update_post_processor()
    if flags.chat_templates:
        named = {name: text for name, text in flags.chat_templates.items() if name != "default"}
        default = flags.chat_templates.get("default")
        tokenizer.chat_template = {**({"default": default} if default else {}), **named} if named else default


def write_flags(out_dir: Path, tokenizer, flags: TokenizerFlags) -> None:
    """After ``save_pretrained``: state the flags in tokenizer_config.json too, for every reader that takes
    them from there rather than from tokenizer.json's post-processor (older transformers, other tools), and
    let generation stop on every end-of-generation token the file names."""
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    config["add_bos_token"] = bool(tokenizer.add_bos_token)
    config["add_eos_token"] = bool(tokenizer.add_eos_token)
    # Decoding must give back the text as the model wrote it: pin the clean-up transformers applied.
    config["clean_up_tokenization_spaces"] = bool(tokenizer.clean_up_tokenization_spaces)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    generation_path = out_dir / "generation_config.json"
    if flags.stop_ids and generation_path.exists():
        generation = json.loads(generation_path.read_text())
        current = generation.get("eos_token_id")
        stops = [current] if isinstance(current, int) else list(current or [])
        stops += [token_id for token_id in flags.stop_ids if token_id not in stops]
        generation["eos_token_id"] = stops[0] if len(stops) == 1 else stops
        generation_path.write_text(json.dumps(generation, indent=2) + "\n")
