"""A CTC head on the encoder output, for training a SAN-M encoder from scratch.

The released models start from a pretrained Paraformer encoder; a model trained here from nothing
(the bundled demo) first teaches its encoder with CTC, then freezes it for the LLM stage. The
head is a training aid only: export writes the encoder without it.

Vocabulary: blank = 0, ``<unk>`` = 1, then English whole words (lowercased) and single Chinese
characters, most frequent first. Whole words suit the 60 ms frames: letters would need more
frames than short words have.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mooer.errors import CheckpointError, ConfigError

BLANK = "<blank>"
UNK = "<unk>"
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_IS_CJK = re.compile(rf"[{_CJK}]")


def ctc_tokens(text: str) -> list[str]:
    """``"today 是 星期三"`` -> ``["today", "是", "星", "期", "三"]`` (lowercased)."""
    return _TOKEN.findall(text.lower())


@dataclass
class CtcVocab:
    tokens: list[str]  # index = id; tokens[0] is the blank, tokens[1] the unknown token

    def __post_init__(self) -> None:
        if self.tokens[:2] != [BLANK, UNK]:
            raise ConfigError(f"a CTC vocabulary starts with {BLANK}, {UNK}; got {self.tokens[:2]}")
        self._ids = {token: i for i, token in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> CtcVocab:
        counts = Counter(token for text in texts for token in ctc_tokens(text))
        kept = sorted(
            (t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t)
        )
        return cls([BLANK, UNK, *kept])

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(token, 1) for token in ctc_tokens(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text: words joined by spaces, Chinese characters by nothing."""
        out = ""
        previous = ""
        for i in ids:
            token = self.tokens[i]
            if token == BLANK:
                continue
            if out and not (_IS_CJK.match(token) or _IS_CJK.match(previous)):
                out += " "
            out += token
            previous = token
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.tokens, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CtcVocab:
        try:
            tokens = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CheckpointError(f"cannot read CTC vocabulary {path}: {err}") from err
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise CheckpointError(f"CTC vocabulary {path} must be a JSON list of strings")
        return cls(tokens)


class CtcHead(nn.Module):
    """Linear projection of encoder frames to CTC token log-probabilities."""

    def __init__(self, encoder_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(encoder_dim, vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, D) encoder output -> (B, T, V) log-probabilities in float32."""
        return F.log_softmax(self.proj(hidden).float(), dim=-1)

    def loss(
        self, hidden: torch.Tensor, lengths: torch.Tensor, targets: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """CTC loss summed over each utterance, averaged over the batch.

        An utterance whose target does not fit its frames contributes 0 (``zero_infinity``).
        """
        log_probs = self(hidden).transpose(0, 1)  # (B, T, V) -> (T, B, V)
        flat = torch.tensor([t for seq in targets for t in seq], dtype=torch.long)
        target_lengths = torch.tensor([len(seq) for seq in targets], dtype=torch.long)
        total = F.ctc_loss(
            log_probs,
            flat.to(log_probs.device),
            lengths.to(log_probs.device),
            target_lengths.to(log_probs.device),
            blank=0,
            reduction="sum",
            zero_infinity=True,
        )
        return total / len(targets)


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """(B, T, V) log-probabilities -> token ids per item: best path, repeats merged, blanks dropped."""
    best = log_probs.argmax(-1).cpu()  # (B, T)
    out = []
    for row, n in zip(best.tolist(), lengths.tolist()):
        path = row[:n]
        out.append([t for i, t in enumerate(path) if t != 0 and (i == 0 or t != path[i - 1])])
    return out
