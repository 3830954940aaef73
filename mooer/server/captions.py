"""Append-only text streams built from revisable partials, for protocols that cannot take back text.

The engine's partial transcripts may change their unstable tail; the Translation API's
transcript deltas and FunASR's online results are appended by the client as they come. So
only text that will not change is sent: the stable prefix while an utterance goes on, the
rest when its final arrives, in whole units (``mooer.agent.stable_text.continuation``: what was
sent stays sent, and a final that revised it adds what follows its last agreeing unit).
Utterances are joined with a space where both sides are words written with spaces (not
between Chinese characters).
"""

from __future__ import annotations

from collections.abc import Callable

from mooer.agent.stable_text import continuation, revises
from mooer.text import separator


class AppendOnlyText:
    """One stream of text made of utterances; ``advance`` returns only the new piece to send."""

    def __init__(self, on_revision: Callable[[], None] | None = None) -> None:
        self.sent = ""  # everything sent, all utterances
        self._utterance = ""  # what was sent of the current utterance
        self._item: str | None = None
        self.revisions = 0  # finals that contradicted text already sent
        self._on_revision = on_revision

    def current(self, item_id: str) -> str:
        """What was sent of utterance ``item_id`` so far ('' if it is not the current one)."""
        return self._utterance if item_id == self._item else ""

    def advance(self, item_id: str, text: str, final: bool = False) -> str:
        """``text`` is the utterance's settled text so far (stable prefix, or the final).

        Returns what to append, '' if nothing new. Sent text cannot be taken back: a final that
        revises it adds its units after the last one it shares with what was sent, so the end
        of the utterance is not lost for a revised word and no word is cut.
        """
        if item_id != self._item:
            self._item, self._utterance = item_id, ""
        piece = ""
        if final:
            if revises(self._utterance, text):
                self.revisions += 1
                if self._on_revision is not None:
                    self._on_revision()
            piece = continuation(self._utterance, text)
        elif len(text) > len(self._utterance) and text.startswith(self._utterance):
            piece = text[len(self._utterance) :]
        if piece:
            if not self._utterance:
                piece = separator(self.sent, piece) + piece.lstrip()
            self._utterance += piece
        if final:
            self._item = None
        self.sent += piece
        return piece
