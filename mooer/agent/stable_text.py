"""The output policy of partial results: successive hypotheses -> text that is never taken back.

Clients of append-only streams (the Realtime Translation API, FunASR's online results) keep
every delta, so a delta must be final. The policy works on whole units (a word, or one Chinese
character), never on character offsets: a unit is committed once ``agree`` successive
hypotheses agree on it and on everything before it, and each went on past it (a word at a
hypothesis's end may still grow: "thir" -> "thirteen"). The final, decoded afresh, may
contradict what was committed; what it adds then starts after its unit that corresponds to the
last one sent, so the client's text is always whole units of the hypotheses and the final, and
never loses the final's ending.
"""

from __future__ import annotations

import difflib
from collections import deque

from mooer.errors import check_number
from mooer.text import has_chinese, separator, units

# Hypotheses that must agree before a unit is committed. Translations of a sentence's prefix
# change more than its transcript: on the demo model, with two, 7 of 12 held-out sentences'
# finals contradicted committed English (bench/bench_simul.py); with three, none did.
TRANSCRIPT_AGREE = 2
TRANSLATION_AGREE = 3


def _words(text: str) -> list[str]:
    return [u.strip() for u in units(text)]


def continuation(sent: str, final: str) -> str:
    """What to append to ``sent`` (text already sent, whole units) for the final text ``final``.

    The units of ``final`` after the one that corresponds to the end of ``sent``, aligned word
    by word (difflib): its remainder when ``sent`` is a prefix of it; past a word it replaced
    ("the cap" for "the cat sat": " sat"); all of it when the two share no unit at all (a
    hallucinated commit: the final's meaning still reaches the client). Spaced as ``final``.
    """
    done, pieces = _words(sent), units(final.strip())
    ours = [p.strip() for p in pieces]
    ops = difflib.SequenceMatcher(None, done, ours, autojunk=False).get_opcodes()
    at = 0
    if any(tag == "equal" for tag, *_ in ops):
        n = len(done)
        i1, j1, j2 = next((i1, j1, j2) for _, i1, i2, j1, j2 in ops if i1 <= n <= i2)
        at = j1 + min(n - i1, j2 - j1)
    piece = "".join(pieces[at:])
    if at == 0:
        piece = piece.lstrip()
        piece = separator(sent, piece) + piece
    return piece


def revises(sent: str, final: str) -> bool:
    """Whether ``final`` contradicts text already sent (the client keeps a retracted unit)."""
    done = _words(sent)
    return _words(final)[: len(done)] != done


class StableText:
    """Successive partial hypotheses of one utterance -> append-only stable text.

    ``stable`` grows by whole units on which the last ``agree`` hypotheses agree and never
    shrinks; ``shown`` is the last hypothesis when it goes on from ``stable``, else ``stable``.
    """

    def __init__(self, agree: int = TRANSCRIPT_AGREE) -> None:
        check_number(agree, "StableText agree (hypotheses that agree)", 2, integer=True)
        self.stable = ""
        self.shown = ""
        self._recent: deque[list[str]] = deque(maxlen=agree)

    def update(self, hypothesis: str) -> str:
        """Take a new partial; return the text it adds to ``stable`` (often "")."""
        pieces = units(hypothesis.strip())
        self._recent.append([p.strip() for p in pieces])
        done = _words(self.stable)
        delta = ""
        if len(self._recent) == self._recent.maxlen:
            agreed = _agreed(list(self._recent))
            if agreed > len(done) and self._recent[-1][: len(done)] == done:
                delta = "".join(pieces[len(done) : agreed])
                if not self.stable:
                    delta = delta.lstrip()
                self.stable += delta
        done = _words(self.stable)
        self.shown = hypothesis.strip() if self._recent[-1][: len(done)] == done else self.stable
        return delta

    def finish(self, final: str) -> str:
        """Take the final text; return what it adds to ``stable`` (see ``continuation``)."""
        delta = continuation(self.stable, final)
        self.stable += delta
        self.shown = final
        return delta


def _agreed(hypotheses: list[list[str]]) -> int:
    """How many leading units all ``hypotheses`` share, counting a word only where every one
    goes on past it (a Chinese character is whole by itself)."""
    n = 0
    first = hypotheses[0]
    while n < len(first) and all(len(h) > n and h[n] == first[n] for h in hypotheses):
        n += 1
    while n and not has_chinese(first[n - 1]) and any(len(h) == n for h in hypotheses):
        n -= 1
    return n
