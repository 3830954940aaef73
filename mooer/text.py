"""What mooer needs to know of a text's script: Chinese units, its language, joining pieces.

Mandarin is written without spaces, one character a unit; English (and numbers) as words between
spaces. Transcripts, partial results and spoken sentences all follow from that one rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Characters that are whole units by themselves: CJK ideographs and CJK/full-width punctuation.
_UNIT_CHAR = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def has_chinese(text: str) -> bool:
    """Whether ``text`` holds a CJK character or CJK punctuation."""
    return _UNIT_CHAR.search(text) is not None


def language_of(text: str) -> str:
    """``"zh"`` for text with Chinese in it, else ``"en"`` (also for "")."""
    return "zh" if has_chinese(text) else "en"


def _spaced(ch: str) -> bool:
    """Whether a character belongs to a script written with spaces between words."""
    return ch.isalnum() and not ("\u2e80" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af")


def separator(before: str, after: str) -> str:
    """What goes between two utterances' texts: a space between words, nothing after CJK."""
    last, first = before[-1:], after.lstrip()[:1]
    if not last or not first or last.isspace():
        return ""
    return " " if _spaced(first) and (_spaced(last) or last in ".,!?;:") else ""


def join_texts(texts: Iterable[str]) -> str:
    """Consecutive pieces of one text (utterances, segments of a long file) as one text,
    spaced as ``separator`` says."""
    joined = ""
    for text in (t.strip() for t in texts):
        if text:
            joined += separator(joined, text) + text
    return joined


_UNIT = re.compile(rf"\s*(?:{_UNIT_CHAR.pattern}|[^\s{_UNIT_CHAR.pattern[1:-1]}]+)")


def units(text: str) -> list[str]:
    """``text`` as its units (a CJK character, or a word: a run of other non-space characters),
    each with the whitespace before it; they concatenate to ``text`` less trailing whitespace.

    "今天 is fine" -> ["今", "天", " is", " fine"].
    """
    return _UNIT.findall(text)
