"""One live connection kept as a meeting: its sessions' events in, stored segments out.

A connection may run several engine sessions one after another (a Realtime ``session.update``
that changes the task, FunASR's files); each session's times count from its own first sample,
so the caller passes that session's offset and the meeting's stream time runs on unbroken.
Wall-clock times assume the audio arrived in real time: an utterance that ended ``d`` ms of
audio ago ended ``d`` ms before now (exact for a live microphone; a file sent faster than real
time gets its times squeezed towards the moment it was sent).

A chat's replies are segments of their own, spoken by ``ASSISTANT``: from when the reply began
to when it ended, in the same stream time (the audio received by then).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from mooer.agent import events as ev
from mooer.asr.speakers import speaker_label
from mooer.meetings.store import MeetingStore, Segment, new_meeting_id
from mooer.meetings.tape import AudioTape

ASSISTANT = "assistant"  # the speaker of a chat's replies


@dataclass
class _Times:
    start_ms: int
    wall_start: float
    end_ms: int | None = None
    wall_end: float | None = None


class Recording:
    """Feed it every engine event of a connection, in order, from one thread. ``StoreError``
    from ``observe`` means the segment was not kept; the caller decides to stop."""

    def __init__(self, store: MeetingStore, protocol: str, received_ms: Callable[[], int],
                 now: Callable[[], float] = time.time, tape: AudioTape | None = None,
                 ) -> None:  # fmt: skip
        self.store = store
        self.protocol = protocol
        self.meeting_id = new_meeting_id()
        self.received_ms = received_ms  # audio the connection has received so far
        self.now = now
        self.started_at = now()
        self.tape = tape  # the audio received, when segments keep theirs
        self._times: dict[str, _Times] = {}
        self._replies: dict[str, tuple[str, _Times]] = {}  # response id -> (item id, times)
        self._kept: set[str] = set()  # item ids stored so far (their audio with the first)
        self._last_end_ms = 0  # where a turn without voice activity events starts

    def begin(self) -> None:
        self.store.create(self.protocol, self.started_at, self.meeting_id)

    def end(self) -> None:
        self.store.end(self.meeting_id, self.now())

    def _wall(self, ms: int) -> float:
        return max(self.started_at, self.now() - max(0, self.received_ms() - ms) / 1000)

    def observe(self, event: ev.Event, offset_ms: int) -> None:
        """One engine event of the session whose stream time 0 is the meeting's ``offset_ms``."""
        if isinstance(event, ev.SpeechStarted):
            start = offset_ms + event.audio_start_ms
            self._times[event.item_id] = _Times(start, self._wall(start))
        elif isinstance(event, ev.SpeechStopped):
            self._close(event.item_id, offset_ms + event.audio_end_ms)
        elif isinstance(event, ev.Committed):  # a manual turn ends where the audio received did
            self._close(event.item_id, self.received_ms())
        elif isinstance(event, ev.Transcript | ev.Translation):
            times = self._close(event.item_id, self.received_ms())
            text = {"transcript": event.text} if isinstance(event, ev.Transcript) else {
                "translation": event.text}  # fmt: skip
            speaker = None if event.speaker is None else speaker_label(event.speaker)
            self._keep(
                event.item_id,
                times,
                True,
                language=getattr(event, "language", None),
                speaker=speaker,
                **text,
            )
            self._last_end_ms = max(self._last_end_ms, times.end_ms)
        elif isinstance(event, ev.ResponseStarted):
            now = self.received_ms()
            self._replies[event.response_id] = (event.output_item_id, _Times(now, self._wall(now)))
        elif isinstance(event, ev.ResponseDone) and event.response_id in self._replies:
            item_id, times = self._replies.pop(event.response_id)
            times.end_ms, times.wall_end = max(times.start_ms, self.received_ms()), self.now()
            if event.text:
                self._keep(item_id, times, False, transcript=event.text, speaker=ASSISTANT)

    def _keep(self, item_id: str, times: _Times, heard: bool, **fields: str | None) -> None:
        """Store a segment; a ``heard`` one (not a reply) with its audio, the first time."""
        audio = None
        if heard and self.tape is not None and item_id not in self._kept:
            audio = self.tape.flac(times.start_ms, times.end_ms)
        segment = Segment(item_id, times.start_ms, times.end_ms, times.wall_start,
                          times.wall_end, **fields)  # fmt: skip
        self.store.keep(self.meeting_id, segment, audio)
        self._kept.add(item_id)

    def _close(self, item_id: str, end_ms: int) -> _Times:
        """The item's times, ended at ``end_ms`` unless they were ended before."""
        times = self._times.get(item_id)
        if times is None:
            times = self._times[item_id] = _Times(self._last_end_ms, self._wall(self._last_end_ms))
        if times.end_ms is None:
            times.end_ms, times.wall_end = max(end_ms, times.start_ms), self._wall(end_ms)
        return times
