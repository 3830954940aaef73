"""Work that clients of the engine queue at the same moment, run as one batch on its worker.

A job's step adds its items (waveforms to encode, prompts to answer) and is parked until its
future is done. The worker runs the batch once every client that was waiting for a turn when the
batch opened has had its step (their items join it: at most one turn of the round later than
alone), at once when no other client is ready, and as soon as it reaches its bounds. A batch
that fails is run again one request at a time, so that only a bad request fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741  an item
R = TypeVar("R")  # what a request gets back


@dataclass(eq=False)
class Asked(Generic[I, R]):
    """One client's items and the future of their result."""

    items: list[I]
    future: Future[R]


class Batch(Generic[I, R]):
    """The requests waiting for the next batched run. ``add``, ``due`` and ``take`` run under
    the engine's lock; ``run`` on its worker, outside the lock. Subclasses say what fits
    (``fits``) and compute a batch (``compute``)."""

    def __init__(self) -> None:
        self._asked: list[Asked[I, R]] = []
        self._due_at = 0  # the engine's step count from which the open batch runs

    @property
    def pending(self) -> bool:
        return bool(self._asked)

    def add(self, items: Sequence[I], step: int, waiting: int) -> Future[R]:
        """Queue ``items`` for the next run; ``step``: the steps the engine has begun,
        ``waiting``: the clients waiting for a turn (a new batch runs after their steps)."""
        if not items:
            raise ValueError("nothing to run")
        if not self._asked:
            self._due_at = step + waiting
        asked: Asked[I, R] = Asked(list(items), Future())
        self._asked.append(asked)
        return asked.future

    def due(self, step: int, idle: bool) -> bool:
        """Whether the worker should run the batch now; ``idle``: no client is ready."""
        if not self._asked:
            return False
        return idle or step >= self._due_at or self.fits(self._asked) is not True

    def fits(self, asked: Sequence[Asked[I, R]]) -> bool | None:
        """True within the bounds, None exactly full, False beyond them."""
        raise NotImplementedError

    def take(self) -> list[Asked[I, R]]:
        """The requests of the next run, oldest first and within the bounds (cancelled ones
        are dropped); the rest stay for the run after. One client's items are never split;
        a request beyond the bounds alone runs alone."""
        taken: list[Asked[I, R]] = []
        while self._asked:
            asked = self._asked[0]
            if taken and self.fits([*taken, asked]) is False:
                break
            self._asked.pop(0)
            if asked.future.set_running_or_notify_cancel():  # False: its job was dropped
                taken.append(asked)
        return taken

    def compute(self, taken: Sequence[Asked[I, R]]) -> list[R]:
        """Each request's result, from one batched run of all their items."""
        raise NotImplementedError

    def run(self, taken: Sequence[Asked[I, R]]) -> int:
        """Run ``taken`` as one batch and hand each request its result; the batch's item count.

        If the batch fails, each request is run alone, so that only a bad one fails."""
        if not taken:
            return 0
        try:
            results = self.compute(taken)
        except Exception as exc:
            if len(taken) == 1:
                taken[0].future.set_exception(exc)
                return 0
            return max(self.run([asked]) for asked in taken)
        for asked, result in zip(taken, results, strict=True):
            asked.future.set_result(result)
        return sum(len(asked.items) for asked in taken)
