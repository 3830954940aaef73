"""A session's event sink for the tests: thread-safe, with waiting on a condition."""

from __future__ import annotations

import threading

from mooer.agent import events as ev


class Recorder:
    """Collects a session's events; thread-safe, with waiting on a condition."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: ev.Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def of(self, kind: type) -> list:
        with self._cond:
            return [e for e in self.events if isinstance(e, kind)]

    def wait_for(self, test, timeout: float = 30.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: any(test(e) for e in self.events), timeout)
