"""A tiny Whisper with random weights (about 0.26M parameters), made from its ``transformers`` config with a
small byte-level BPE tokenizer that holds Whisper's special tokens: no Whisper weights are on the package
registry. Its transcripts are noise; what it proves is that vLLM serves the audio routes for the
architecture, from the form the gateway sends. Built by the engine's own Python (it reads vLLM's language
list); the engine decodes the upload with ``soundfile`` (serving/engines/requirements-cpu.txt)."""

from __future__ import annotations

import subprocess
from pathlib import Path

BUILD = r"""
import sys
from pathlib import Path
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                          WhisperProcessor, WhisperTokenizerFast)
from vllm.model_executor.models.whisper import ISO639_1_SUPPORTED_LANGS

out = Path(sys.argv[1])
special = ["<|endoftext|>", "<|startoftranscript|>", *[f"<|{c}|>" for c in ISO639_1_SUPPORTED_LANGS],
           "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|prev|>", "<|nocaptions|>",
           "<|notimestamps|>"]
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
bpe.train_from_iterator(["the invoice was charged twice please refund the double charge"] * 10, trainer)
tokenizer = WhisperTokenizerFast(tokenizer_object=bpe, bos_token=special[0], eos_token=special[0],
                                 unk_token=special[0], pad_token=special[0])
tokenizer.add_special_tokens({"additional_special_tokens": special[1:]})
WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer).save_pretrained(out)
start, end = tokenizer.convert_tokens_to_ids("<|startoftranscript|>"), tokenizer.convert_tokens_to_ids(special[0])
config = WhisperConfig(vocab_size=len(tokenizer), num_mel_bins=80, d_model=64, encoder_layers=1, decoder_layers=1,
                       encoder_attention_heads=1, decoder_attention_heads=1, encoder_ffn_dim=128,
                       decoder_ffn_dim=128, max_source_positions=1500, max_target_positions=448,
                       decoder_start_token_id=start, pad_token_id=end, bos_token_id=end, eos_token_id=end,
                       suppress_tokens=[], begin_suppress_tokens=None)
torch.manual_seed(0)
model = WhisperForConditionalGeneration(config)
model.generation_config.forced_decoder_ids = None
model.save_pretrained(out, safe_serialization=True)
"""


def build(python: str, into: Path) -> Path:
    """The model folder, built by ``python`` (the engine's)."""
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run([python, "-c", BUILD, str(into)], check=True, capture_output=True, timeout=300)  # noqa: S603
    return into
