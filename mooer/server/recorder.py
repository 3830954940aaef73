"""A connection's recording on the server side: the meeting writer thread and its failures.

While a connection records, each of its engine events passes through the hub's one meeting
writer thread on its way to the event loop; a final is stored there before it is handed on,
so a client never hears a final that a crash could still lose. A store that fails stops that
connection's recording, never its session: the client gets a ``recording_stopped`` error and
its events keep flowing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from mooer.server.connection import ProtocolError

if TYPE_CHECKING:
    from mooer.meetings.recording import Recording

log = logging.getLogger("mooer.server")


class Recorder:
    """One connection's ``Recording``, run on ``writer``; ``report`` runs on ``loop``."""

    def __init__(self, recording: Recording, writer: Executor, loop: asyncio.AbstractEventLoop,
                 report: Callable[[ProtocolError], None]) -> None:  # fmt: skip
        self.recording = recording
        self.writer = writer
        self.loop = loop
        self.report = report
        self.failed = False
        self._submit(self._guarded, recording.begin)

    @property
    def meeting_id(self) -> str:
        return self.recording.meeting_id

    def keep(self, event: Any, offset_ms: int, then: Callable[[Any], None]) -> None:
        """Store ``event`` if it is a final, then ``then(event)``: from any thread, in order."""
        if not self._submit(self._keep, event, offset_ms, then):
            then(event)  # the server is closing: the writer is gone

    def hear(self, samples: Any) -> None:
        """Audio the connection received (16 kHz), for the segments' audio when it is kept."""
        if self.recording.tape is not None and not self.failed:
            self.recording.tape.append(samples)

    def stop(self) -> None:
        """The connection is over: mark the meeting ended after its last segment."""
        self._submit(self._guarded, self.recording.end)

    def _keep(self, event: Any, offset_ms: int, then: Callable[[Any], None]) -> None:
        self._guarded(self.recording.observe, event, offset_ms)
        then(event)

    def _submit(self, fn: Callable[..., None], *args: Any) -> bool:
        try:
            self.writer.submit(fn, *args)
        except RuntimeError:  # shut down
            return False
        return True

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        if self.failed:
            return
        try:
            fn(*args)
        except Exception as exc:  # a failing store must not touch the session
            self.failed = True
            log.warning("meeting %s: recording stopped: %s", self.meeting_id, exc)
            error = ProtocolError(
                "recording_stopped",
                f"recording of meeting {self.meeting_id} stopped, the session goes on: {exc}",
                kind="server_error",
            )
            try:
                self.loop.call_soon_threadsafe(self.report, error)
            except RuntimeError:  # the loop is closed
                pass
