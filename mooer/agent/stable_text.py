"""The output policy of partial results: successive hypotheses -> text that is never taken back."""

from __future__ import annotations

from mooer.text import agreed_prefix


class StableText:
    """Successive partial hypotheses of one utterance -> append-only stable text.

    The stable text grows to the agreed prefix of the last two hypotheses and never shrinks;
    a hypothesis that contradicts it is shown only up to the stable text.
    """

    def __init__(self) -> None:
        self.stable = ""
        self.shown = ""
        self._last: str | None = None

    def update(self, hypothesis: str) -> str:
        """Take a new partial; return the text it adds to ``stable`` (often "")."""
        delta = ""
        if self._last is not None:
            agreed = agreed_prefix(self._last, hypothesis)
            if len(agreed) > len(self.stable) and agreed.startswith(self.stable):
                delta, self.stable = agreed[len(self.stable) :], agreed
        self._last = hypothesis
        self.shown = hypothesis if hypothesis.startswith(self.stable) else self.stable
        return delta

    def finish(self, final: str) -> str:
        """Take the final text; return what it adds to ``stable`` ("" if it revised it)."""
        delta = final[len(self.stable) :] if final.startswith(self.stable) else ""
        self.stable = self.shown = final
        return delta
