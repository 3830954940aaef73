from __future__ import annotations

import math

import pytest
import torch

from mooer.errors import CheckpointError, ConfigError
from mooer.train.ctc import BLANK, UNK, CtcHead, CtcVocab, ctc_tokens, greedy_decode


def test_tokens_are_english_words_and_chinese_characters():
    assert ctc_tokens("Today is 星期三 ok") == ["today", "is", "星", "期", "三", "ok"]
    assert ctc_tokens("  ") == []


def test_vocabulary_round_trip_and_order(tmp_path):
    vocab = CtcVocab.build(["the red car", "the blue car", "今天星期三"])
    assert vocab.tokens[:2] == [BLANK, UNK]
    assert vocab.tokens[2:4] == ["car", "the"]  # most frequent first, ties alphabetical
    assert vocab.decode(vocab.encode("the blue car")) == "the blue car"
    assert vocab.decode(vocab.encode("今天星期三")) == "今天星期三"
    assert vocab.encode("the green car")[1] == 1  # unknown word -> <unk>
    path = tmp_path / "vocab.json"
    vocab.save(path)
    assert CtcVocab.load(path).tokens == vocab.tokens


def test_bad_vocabularies_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="starts with"):
        CtcVocab(["a", "b"])
    path = tmp_path / "vocab.json"
    path.write_text('{"not": "a list"}')
    with pytest.raises(CheckpointError, match="JSON list"):
        CtcVocab.load(path)


def test_greedy_decode_merges_repeats_and_drops_blanks():
    path = [0, 3, 3, 0, 3, 2, 2, 0, 5]  # 5 lies beyond the valid length
    log_probs = torch.full((1, len(path), 6), -10.0)
    log_probs[0, torch.arange(len(path)), torch.tensor(path)] = 0.0
    assert greedy_decode(log_probs, torch.tensor([8])) == [[3, 3, 2]]


def test_loss_is_per_utterance_and_ignores_impossible_targets():
    head = CtcHead(4, 5)
    hidden = torch.randn(2, 6, 4)
    both = head.loss(hidden, torch.tensor([6, 6]), [[1, 2], [3]])
    first = head.loss(hidden[:1], torch.tensor([6]), [[1, 2]])
    second = head.loss(hidden[1:], torch.tensor([6]), [[3]])
    assert both.item() == pytest.approx((first.item() + second.item()) / 2, rel=1e-5)
    # 3 frames cannot carry 5 distinct labels: that utterance contributes zero, not inf
    assert math.isfinite(head.loss(hidden[:1], torch.tensor([3]), [[1, 2, 3, 4, 1]]).item())


def test_head_learns_a_tiny_mapping():
    torch.manual_seed(0)
    words = ["one", "two", "three", "four"]
    vocab = CtcVocab.build(words)
    prototypes = torch.randn(len(vocab), 16)  # a fixed frame pattern per token, 0 = silence
    sentences = ["one two", "three four one", "two two", "four three", "one"]

    def frames(text: str) -> torch.Tensor:
        rows = [0]
        for token in vocab.encode(text):
            rows += [token] * 3 + [0]
        return prototypes[rows] + 0.1 * torch.randn(len(rows), 16)

    items = [frames(s) for s in sentences]
    lengths = torch.tensor([len(x) for x in items])
    hidden = torch.nn.utils.rnn.pad_sequence(items, batch_first=True)  # (B, T, 16)
    targets = [vocab.encode(s) for s in sentences]
    head = CtcHead(16, len(vocab))
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    first = None
    for _ in range(150):
        loss = head.loss(hidden, lengths, targets)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 10
    decoded = [vocab.decode(ids) for ids in greedy_decode(head(hidden), lengths)]
    assert decoded == sentences
