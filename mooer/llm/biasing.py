"""Hotwords by context biasing: a bonus for tokens that spell a hotword, on any checkpoint.

The hotwords' bytes go into a prefix tree with failure links (Aho-Corasick), so the tree state
of a hypothesis is found from its tokens alone and follows every beam. A hypothesis is
credited for the part of a hotword it has spelled so far (the word's value times the square of
the share of its characters; ``bonus`` per word, per character in Mandarin) and keeps the whole
value once the word is complete; when a
partial match fails (a token that does not go on spelling it, or the end of the answer), the
credit is taken back. Each step's scores get the change of credit each token would bring:
beam search compares hypotheses by scores that hold their credit, the token loop picks its
next token with it.

Matching bytes rather than token sequences finds a hotword however the tokenizer cuts it:
byte-level BPE merges Mandarin characters across word boundaries (``一个杯子`` is one token
of the demo model's), and a word with or without a leading space is another token. Words that
start with a letter are matched at the start of a word only (after a space, or at the start of
the answer); Mandarin words anywhere.
"""

from __future__ import annotations

import functools
import json
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import LogitsProcessor, PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

from mooer.errors import ConfigError, check_number

SEPARATORS = re.compile(r"[\s,;，、；]+")  # between the words of a prompt or a CLI list


@dataclass(frozen=True)
class BiasingConfig:
    """How strongly hotwords are favoured, and how many a request may give."""

    bonus: float = 2.0  # log-probability per word (per Mandarin character); bench_hotwords.py
    max_hotwords: int = 100
    max_chars: int = 40  # per hotword

    def __post_init__(self) -> None:
        check_number(self.bonus, "BiasingConfig.bonus", 0.01, 20.0)
        check_number(self.max_hotwords, "BiasingConfig.max_hotwords", 1, integer=True)
        check_number(self.max_chars, "BiasingConfig.max_chars", 1, integer=True)


@dataclass(frozen=True)
class Hotwords:
    """Words to favour while decoding (validated here: the edges build one per request)."""

    words: tuple[str, ...]
    config: BiasingConfig = field(default_factory=BiasingConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.words, tuple) or not all(isinstance(w, str) for w in self.words):
            raise ConfigError(f"hotwords must be a tuple of strings, got {self.words!r}")
        if not isinstance(self.config, BiasingConfig):
            raise ConfigError(f"Hotwords.config must be a BiasingConfig, got {self.config!r}")
        if len(self.words) > self.config.max_hotwords:
            raise ConfigError(
                f"hotwords: {len(self.words)} given, at most {self.config.max_hotwords} allowed"
            )
        for word in self.words:
            if not word.strip():
                raise ConfigError("hotwords: an empty hotword")
            if len(word) > self.config.max_chars:
                raise ConfigError(
                    f"hotwords: {word[:20]!r}... is {len(word)} characters long, "
                    f"at most {self.config.max_chars} allowed"
                )


def hotwords_from_list(
    words: Sequence[str], where: str, config: BiasingConfig | None = None
) -> Hotwords | None:
    """Hotwords from a list of words (blanks and repeats dropped); None when none are left.

    ``where`` names the field they came from in the error a bad list raises.
    """
    kept = tuple(dict.fromkeys(w.strip() for w in words if w.strip()))
    if not kept:
        return None
    try:
        return Hotwords(kept, config or BiasingConfig())
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def hotwords_from_text(
    text: object, where: str, config: BiasingConfig | None = None
) -> Hotwords | None:
    """The words of a prompt or a comma-separated list (split at spaces, commas, semicolons)."""
    if not isinstance(text, str):
        raise ConfigError(f"{where}: expected a string, got {type(text).__name__}")
    return hotwords_from_list(SEPARATORS.split(text), where, config)


def hotwords_from_lines(
    text: str, where: str, config: BiasingConfig | None = None
) -> Hotwords | None:
    """A hotword file: one hotword per line; a number after the last space (the weight of
    FunASR's hotword files) is dropped."""
    words = []
    for line in text.splitlines():
        head, _, last = line.strip().rpartition(" ")
        words.append(head if head and _is_weight(last) else line)
    return hotwords_from_list(words, where, config)


def _is_weight(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def hotwords_from_funasr(
    value: object, where: str = "hotwords", config: BiasingConfig | None = None
) -> Hotwords | None:
    """FunASR's ``hotwords``: a JSON object ``{"word": weight}`` (its clients' hotword file) or
    a space-separated string. The weights must be numbers; one ``bonus`` serves every word."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {type(value).__name__}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return hotwords_from_text(value, where, config)
    if not isinstance(parsed, Mapping):
        return hotwords_from_text(value, where, config)
    for word, weight in parsed.items():
        check_number(weight, f"{where}: the weight of {word!r}")
    return hotwords_from_list(list(parsed), where, config)


class _Node:
    __slots__ = ("children", "depth", "fail", "credit", "is_end", "value")

    def __init__(self, depth: int) -> None:
        self.children: dict[int, _Node] = {}
        self.depth = depth  # bytes from the root
        self.fail: _Node | None = None  # the longest proper suffix that is also in the tree
        self.credit = 0.0  # what a hypothesis standing here holds (0 once the word is complete)
        self.is_end = False
        self.value = 0.0  # what a hotword that ends here earns


class HotwordTree:
    """The hotwords' byte strings in a prefix tree with failure links, and the credit a token
    brings from each tree state (see the module docstring)."""

    def __init__(self, hotwords: Hotwords) -> None:
        bonus = hotwords.config.bonus
        self.root = _Node(0)
        self.nodes = [self.root]
        for key in _keys(hotwords.words):
            word = key.decode("utf-8").lstrip(" ")
            value = bonus * _units(word)
            lead = len(key) - len(word.encode("utf-8"))  # the space before a Latin word
            node = self.root
            for i, byte in enumerate(key):
                if byte not in node.children:
                    node.children[byte] = _Node(node.depth + 1)
                    self.nodes.append(node.children[byte])
                node = node.children[byte]
                # the square of the share of the word's characters spelled so far: a letter or
                # two earn little (they start many words: a greedy step must not turn to them
                # for it), a whole character at a time (the first byte of a Mandarin one is
                # shared by thousands); the largest over the words through here; the space
                # before a word earns nothing
                done = len(key[lead : i + 1].decode("utf-8", errors="ignore"))
                node.credit = max(node.credit, value * (done / len(word)) ** 2)
            node.is_end = True
            node.value = max(node.value, value)
        self._deltas: dict[tuple[int, int, int], Tensor] = {}
        self._link()
        # Latin-script answers start as after a space: the first word matches too
        self.start = self.step(self.root, b" ")[0]

    def _link(self) -> None:
        queue = deque([self.root])
        while queue:
            node = queue.popleft()
            for byte, child in node.children.items():
                fail = node.fail
                while fail is not None and byte not in fail.children:
                    fail = fail.fail
                child.fail = fail.children[byte] if fail is not None else self.root
                queue.append(child)

    def held(self, node: _Node) -> float:
        """Credit of a partial match standing at ``node``: taken back if it fails."""
        return 0.0 if node.is_end else node.credit

    def step(self, node: _Node, data: bytes | None) -> tuple[_Node, float]:
        """The state after ``data`` (None: a special token, which ends any match) and the change
        of the hypothesis' credit."""
        if data is None:
            return self.root, -self.held(node)
        banked = 0.0
        state = node
        for byte in data:
            while byte not in state.children and state is not self.root:
                state = state.fail
            state = state.children.get(byte, self.root)
            if state.is_end:
                banked += state.value
        return state, banked + self.held(state) - self.held(node)

    def deltas(self, node: _Node, pieces: tuple[bytes | None, ...], vocab: int) -> Tensor:
        """(V,) the credit change each token (its bytes in ``pieces``; ids past them are
        special) brings from ``node``; cached per node.

        Only tokens whose first byte goes on from a partial match on ``node``'s failure chain
        are walked from ``node``: any other token starts afresh, as from the root, so its
        change is its change from the root less the credit ``node`` holds.
        """
        key = (id(node), id(pieces), vocab)
        found = self._deltas.get(key)
        if found is not None:
            return found
        base = self._from_root(pieces, vocab)
        found = base - self.held(node)
        firsts = _first_bytes(pieces)
        chain = node
        while chain is not self.root:
            for byte in chain.children:
                for token in firsts.get(byte, ()):
                    if token < vocab:
                        found[token] = self.step(node, pieces[token])[1]
            chain = chain.fail
        self._deltas[key] = found
        return found

    def _from_root(self, pieces: tuple[bytes | None, ...], vocab: int) -> Tensor:
        key = (-1, id(pieces), vocab)  # apart from the nodes' own entries
        found = self._deltas.get(key)
        if found is None:
            found = torch.zeros(vocab)
            firsts = set(self.root.children)
            for token, data in enumerate(pieces[:vocab]):
                if data is not None and not firsts.isdisjoint(data):
                    found[token] = self.step(self.root, data)[1]
            self._deltas[key] = found
        return found


UNSPACED_CHAR = 1.0  # bonuses per character of an unspaced script (bench_hotwords.py)


def _units(word: str) -> float:
    """How many ``bonus`` a whole ``word`` earns: one per word of a spaced script,
    ``UNSPACED_CHAR`` per character of an unspaced one (a Mandarin word of two characters is
    two or so tokens)."""
    return sum(1 if part.isascii() else UNSPACED_CHAR * len(part) for part in word.split())


def _keys(words: Sequence[str]) -> list[bytes]:
    """Each hotword's byte strings: as written, lower case and capitalised; a word that starts
    with a letter of a spaced script only after a space (or the answer's start)."""
    keys = []
    for word in words:
        for form in dict.fromkeys((word, word.lower(), word[:1].upper() + word[1:])):
            keys.append((" " + form if form[:1].isascii() else form).encode("utf-8"))
    return keys


@functools.lru_cache(maxsize=4)
def token_bytes(tokenizer: PreTrainedTokenizerBase) -> tuple[bytes | None, ...]:
    """Each token id's bytes; None for special tokens (they end any match)."""
    decoder = {char: byte for byte, char in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)
    found: list[bytes | None] = []
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if piece is None or i in special:
            found.append(None)
        elif all(char in decoder for char in piece):  # byte-level BPE (Qwen)
            found.append(bytes(decoder[char] for char in piece))
        else:  # a tokenizer without a byte alphabet (SentencePiece's ▁ for a space)
            found.append(piece.replace("\u2581", " ").encode("utf-8"))
    return tuple(found)


@functools.lru_cache(maxsize=4)
def _first_bytes(pieces: tuple[bytes | None, ...]) -> dict[int, list[int]]:
    """The token ids by their first byte."""
    found: dict[int, list[int]] = {}
    for token, data in enumerate(pieces):
        if data:
            found.setdefault(data[0], []).append(token)
    return found


class HotwordBias(LogitsProcessor):
    """Adds to each hypothesis' scores the change of hotword credit each token would bring.

    ``input_ids`` (N, t): each hypothesis' answer tokens so far (no prompt: the prompt goes in
    as embeddings), ``scores`` (N, V) -> (N, V). The tree state of a hypothesis is found from
    its tokens (cached by prefix), so it follows beams as they are reordered.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, hotwords: Hotwords) -> None:
        self.tree = hotword_tree(hotwords)
        self.pieces = token_bytes(tokenizer)
        self._states: dict[tuple[int, ...], _Node] = {(): self.tree.start}

    def state(self, tokens: tuple[int, ...]) -> _Node:
        """The tree state after ``tokens`` (the answer so far)."""
        found = self._states.get(tokens)
        if found is None:
            found = self.tree.step(self.state(tokens[:-1]), self._piece(tokens[-1]))[0]
            self._states[tokens] = found
        return found

    def _piece(self, token: int) -> bytes | None:
        return self.pieces[token] if 0 <= token < len(self.pieces) else None

    def deltas(self, node: _Node, vocab: int) -> Tensor:
        """(V,) the credit change each token brings from ``node``."""
        return self.tree.deltas(node, self.pieces, vocab)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = [self.state(tuple(row)) for row in input_ids.tolist()]
        vocab = scores.shape[-1]
        bias = torch.stack([self.deltas(node, vocab) for node in rows])  # (N, V)
        return scores + bias.to(scores.device, scores.dtype)


@functools.lru_cache(maxsize=32)
def hotword_tree(hotwords: Hotwords) -> HotwordTree:
    """The tree of a hotword set, built once per set (sessions reuse theirs every utterance)."""
    return HotwordTree(hotwords)
