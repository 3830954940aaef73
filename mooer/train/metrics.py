"""Evaluation metrics: WER (English), CER (Mandarin), BLEU (translation).

Both sides are normalised the same way before scoring, as MooER's compute-wer does for its
published figures: case and punctuation never count as errors. WER/CER are corpus rates (all
edits over all reference units), not means of per-utterance rates.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import jiwer
import numpy as np
import sacrebleu

from mooer.errors import ConfigError

# A "." or "," inside a number ("3.5", "1,000") is part of it, not punctuation.
_NUMBER_DOT = re.compile(r"(?<=\d)\.(?=\d)")
_NUMBER_COMMA = re.compile(r"(?<=\d),(?=\d\d\d)")
_DOT_MARK = "\uf8ff"  # a private-use character that no text here contains
_WORD_JOINERS = "-–—/"  # "twenty-one" reads as two words, not one


def _strip_punctuation(text: str, replacement: str) -> str:
    return "".join(replacement if unicodedata.category(ch)[0] in "PS" else ch for ch in text)


def normalize_en(text: str) -> str:
    """Lower case, no punctuation, single spaces; "twenty-one" -> "twenty one", "3.5" kept."""
    text = _NUMBER_COMMA.sub("", text.lower())
    text = _NUMBER_DOT.sub(_DOT_MARK, text)
    for joiner in _WORD_JOINERS:
        text = text.replace(joiner, " ")
    text = _strip_punctuation(text, "").replace(_DOT_MARK, ".")
    return " ".join(text.split())


def normalize_zh(text: str) -> str:
    """No punctuation and no spaces (each character is a unit), Latin letters case-folded."""
    return "".join(_strip_punctuation(text.casefold(), "").split())


@dataclass(frozen=True)
class ErrorCounts:
    """Edits that turn a reference into a hypothesis, in words or characters."""

    subs: int = 0
    dels: int = 0
    ins: int = 0
    ref_len: int = 0

    @property
    def errors(self) -> int:
        return self.subs + self.dels + self.ins

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.subs + other.subs,
            self.dels + other.dels,
            self.ins + other.ins,
            self.ref_len + other.ref_len,
        )

    @property
    def rate(self) -> float:
        """errors / ref_len; ConfigError when there is no reference to measure against."""
        if self.ref_len == 0:
            if self.errors == 0:
                return 0.0
            raise ConfigError("error rate is undefined: the references are empty")
        return self.errors / self.ref_len


def _counts(output: jiwer.WordOutput | jiwer.CharacterOutput) -> ErrorCounts:
    return ErrorCounts(
        subs=output.substitutions,
        dels=output.deletions,
        ins=output.insertions,
        ref_len=output.substitutions + output.deletions + output.hits,
    )


def word_errors(ref: str, hyp: str, normalize: bool = True) -> ErrorCounts:
    """Word edits of one English utterance (after ``normalize_en`` unless told not to)."""
    if normalize:
        ref, hyp = normalize_en(ref), normalize_en(hyp)
    return _counts(jiwer.process_words(ref, hyp))


def char_errors(ref: str, hyp: str, normalize: bool = True) -> ErrorCounts:
    """Character edits of one Mandarin utterance (after ``normalize_zh`` unless told not to)."""
    if normalize:
        ref, hyp = normalize_zh(ref), normalize_zh(hyp)
    return _counts(jiwer.process_characters(ref, hyp))


def _check_pairs(refs: Sequence[str], hyps: Sequence[str]) -> None:
    if isinstance(refs, str) or isinstance(hyps, str):
        raise ConfigError("refs and hyps must be lists of strings, not single strings")
    if len(refs) != len(hyps):
        raise ConfigError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ConfigError("no references to score")


def wer(refs: Sequence[str], hyps: Sequence[str], normalize: bool = True) -> float:
    """Corpus word error rate, a fraction (0.05 = 5 %)."""
    _check_pairs(refs, hyps)
    return sum((word_errors(r, h, normalize) for r, h in zip(refs, hyps)), ErrorCounts()).rate


def cer(refs: Sequence[str], hyps: Sequence[str], normalize: bool = True) -> float:
    """Corpus character error rate, a fraction."""
    _check_pairs(refs, hyps)
    return sum((char_errors(r, h, normalize) for r, h in zip(refs, hyps)), ErrorCounts()).rate


def bleu(refs: Sequence[str], hyps: Sequence[str], tokenize: str = "13a") -> float:
    """sacrebleu corpus BLEU (0..100) with one reference each; ``tokenize="zh"`` for Chinese."""
    _check_pairs(refs, hyps)
    try:
        return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize=tokenize).score)
    except (KeyError, ValueError, AssertionError) as exc:
        raise ConfigError(f"sacrebleu cannot score with tokenize={tokenize!r}: {exc}") from exc


@dataclass(frozen=True)
class DiarizationErrors:
    """Seconds of reference speech scored, and of its errors: ``missed`` (speech without a
    label), ``false_alarm`` (a label where no one spoke), ``confusion`` (the wrong speaker)."""

    speech_s: float
    missed_s: float
    false_alarm_s: float
    confusion_s: float

    @property
    def der(self) -> float:
        """Diarisation error rate, 0..1 (may exceed 1 with much false alarm)."""
        wrong = self.missed_s + self.false_alarm_s + self.confusion_s
        return wrong / self.speech_s if self.speech_s else 0.0


def diarization_errors(
    reference: Sequence[tuple[object, float, float]],
    hypothesis: Sequence[tuple[object, float, float]],
    collar_s: float = 0.25,
    step_s: float = 0.01,
) -> DiarizationErrors:
    """DER's parts for (speaker, start s, end s) turns without overlap, scored every ``step_s``
    under the best one-to-one mapping of hypothesis speakers to reference ones; ``collar_s``
    either side of each reference boundary is not scored (as NIST's md-eval does)."""
    from scipy.optimize import linear_sum_assignment

    end = max([e for _, _, e in [*reference, *hypothesis]], default=0.0)
    frames = int(np.ceil(end / step_s)) + 1
    times = (np.arange(frames) + 0.5) * step_s  # (F,) frame centres

    def track(turns: Sequence[tuple[object, float, float]]) -> tuple[np.ndarray, list[object]]:
        names = list(dict.fromkeys(name for name, _, _ in turns))
        who = np.full(frames, -1)  # (F,) index into names, -1: no one
        for name, start, stop in turns:
            who[(times >= start) & (times < stop)] = names.index(name)
        return who, names

    ref, ref_names = track(reference)
    hyp, hyp_names = track(hypothesis)
    scored = np.ones(frames, dtype=bool)
    for _, start, stop in reference:
        for edge in (start, stop):
            scored &= np.abs(times - edge) > collar_s
    ref, hyp = ref[scored], hyp[scored]
    both = (ref >= 0) & (hyp >= 0)
    overlap = np.zeros((len(ref_names), len(hyp_names)))  # frames where both speak, per pair
    np.add.at(overlap, (ref[both], hyp[both]), 1)
    rows, cols = linear_sum_assignment(-overlap)
    matched = overlap[rows, cols].sum()
    return DiarizationErrors(
        speech_s=float((ref >= 0).sum() * step_s),
        missed_s=float(((ref >= 0) & (hyp < 0)).sum() * step_s),
        false_alarm_s=float(((ref < 0) & (hyp >= 0)).sum() * step_s),
        confusion_s=float((both.sum() - matched) * step_s),
    )
