"""A small byte-level BPE tokenizer that keeps Qwen's special tokens, for models trained from scratch.

Qwen2's own vocabulary (151,643 tokens) would make a tiny demo LLM mostly embedding table. This
tokenizer is trained on the corpus and the prompt templates, uses byte-level BPE like Qwen (so any
text round-trips), and carries the same special tokens, so prompts, eos and padding work unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from mooer.llm.prompts import AUDIO_START, IM_END, PAD, TASK_PROMPTS, TEMPLATE

IM_START = "<|im_start|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END, AUDIO_START)  # ids 0..3


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 2000) -> Path:
    """Train on ``texts`` (plus every task prompt) and save a Hugging Face tokenizer dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    prompts = [TEMPLATE.format(p) for p in TASK_PROMPTS.values()]
    tok.train_from_iterator([*prompts, *texts], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[IM_START, AUDIO_START],
    )
    out = Path(out_dir)
    fast.save_pretrained(out)
    # Byte-level BPE needs no unknown token, and Qwen's config says so: without this,
    # Qwen2Tokenizer (which an LLM folder loads it as) would make <|endoftext|> the unknown.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["unk_token"] = None
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return out
