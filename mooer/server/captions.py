"""Append-only text streams built from revisable partials, for protocols that cannot take back text.

The engine's partial transcripts may change their unstable tail; the Translation API's
transcript deltas and FunASR's online results are appended by the client as they come. So
only text that will not change is sent: the stable prefix while an utterance goes on, the
rest when its final arrives (the final is authoritative but what was sent stays sent). Utterances are joined with a space where both sides are words
written with spaces (not between Chinese characters).
"""

from __future__ import annotations

from mooer.transcribe import join_texts, separator

__all__ = ["AppendOnlyText", "join_texts", "separator"]


class AppendOnlyText:
    """One stream of text made of utterances; ``advance`` returns only the new piece to send."""

    def __init__(self) -> None:
        self.sent = ""  # everything sent, all utterances
        self._utterance = ""  # what was sent of the current utterance
        self._item: str | None = None

    def current(self, item_id: str) -> str:
        """What was sent of utterance ``item_id`` so far ('' if it is not the current one)."""
        return self._utterance if item_id == self._item else ""

    def advance(self, item_id: str, text: str, final: bool = False) -> str:
        """``text`` is the utterance's settled text so far (stable prefix, or the final).

        Returns what to append, '' if nothing new. Sent text cannot be taken back: when a final
        revises it, the final's text past the length already sent is appended, so the end of
        the utterance is not lost for a revised word.
        """
        if item_id != self._item:
            self._item, self._utterance = item_id, ""
        piece = ""
        if len(text) > len(self._utterance) and (final or text.startswith(self._utterance)):
            piece = text[len(self._utterance) :]
            if not self._utterance:
                piece = separator(self.sent, piece) + piece
            self._utterance = text
        if final:
            self._item = None
        self.sent += piece
        return piece
