"""The live sessions' voice activity detection, in rounds on a clock.

A frame of audio is only heard when it arrives (``Session.hear``: it joins the session's
stream); every ``TICK_S`` the VAD scores what all sessions heard since, one network call per
round of windows for all of them (``mooer.agent.session.score_heard``). Scored one session at
a time, the VAD took as much of the event loop's CPU as the websocket frames: a call costs
about as much for 8 windows as for 2. The price is the wait for the tick, half of it on
average, before a turn's start or end is seen.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from mooer.agent.session import Session, score_heard

log = logging.getLogger("mooer.server")

TICK_S = 0.032  # one VAD window: a live stream has one window due per tick


class VadClock:
    """The sessions that heard audio since the last tick, and the tick's timer (on the
    event loop that calls ``hear``)."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self._heard: dict[int, Session] = {}  # by id(session), in the order they heard
        self._timer: asyncio.TimerHandle | None = None

    def hear(self, session: Session, samples: np.ndarray) -> None:
        """``session`` takes ``samples`` now; the VAD scores them at the next tick."""
        session.hear(samples)
        self._heard[id(session)] = session
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.tick_s, self._tick)

    def _tick(self) -> None:
        self._timer = None
        sessions, self._heard = list(self._heard.values()), {}
        try:
            score_heard(sessions)
        except Exception:  # a bug must not leave the other sessions unscored for good
            log.exception("the VAD failed on %d session(s)' audio", len(sessions))
