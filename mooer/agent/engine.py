"""The shared model and the one worker thread that runs all model work, fairly across sessions.

The speech LLM is loaded once; every session queues its work here. One worker runs it, because
on a CPU or a single accelerator parallel decodes only slow each other down, and it takes the
sessions round-robin, one step of one job at a time: a step is one decode (a partial or a
final) or one token of a chat reply. A session that talks for long therefore delays the others
by at most one step per turn of the round, a partial still queued is replaced by its session's
newer one (finals are never dropped), and an utterance's final drops its queued partials and
jumps the round (it is what a user waits for at the end of a turn).

Threads: ``on_event`` runs on the worker thread for results (transcripts, translations,
replies) and on the caller's thread for what ``feed``/``commit``/``close`` find at once (speech
started/stopped, committed), never concurrently for one session; a server bridges both to its
event loop with ``loop.call_soon_threadsafe``. The worker uses ``threads`` torch threads; the
VAD inside ``Session.feed`` runs on one torch thread of the caller's (see ``VadModel``).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from mooer.agent.events import Event
from mooer.agent.session import Session, SessionConfig
from mooer.agent.vad import VadModel, shared_vad_model
from mooer.errors import ConfigError
from mooer.llm.conversation import turn_end_id
from mooer.model import SpeechLLM
from mooer.tts.backend import TTSBackend, load_backend

log = logging.getLogger(__name__)

JobKind = Literal["partial", "final", "response", "control"]
Work = Iterator[None] | Callable[[], object]


@dataclass(eq=False)
class Job:
    """Queued work of one session; each ``next(steps)`` is one step on the worker."""

    session: Session
    kind: JobKind
    steps: Iterator[None]
    started: bool = False


def _steps(work: Work) -> Iterator[None]:
    if isinstance(work, Iterator):
        return work
    return _call(work)


def _call(fn: Callable[[], object]) -> Iterator[None]:
    fn()
    yield from ()


SMALL_MODEL_PARAMS = 100_000_000


def default_threads(model: SpeechLLM) -> int:
    """Torch threads for the worker: every core for a real model, one for a small one.

    A small model's matrices are too small to split: extra threads only add synchronisation,
    and on a busy machine they wait for one another (a fabricated model's final decode took
    0.34 s on one thread and 6.3 s on two, on two cores shared with other work).
    """
    params = sum(p.numel() for p in model.parameters())
    return 1 if params < SMALL_MODEL_PARAMS else available_cores()


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Engine:
    """Owns the model and the worker; ``open`` makes sessions that share them.

    ``threads``: torch intra-op threads of the worker (default: ``default_threads``).
    ``vad_model``: default, the silero model shared by the process, loaded on the first
    session with turn detection.
    """

    def __init__(
        self,
        model: SpeechLLM,
        threads: int | None = None,
        vad_model: VadModel | None = None,
    ) -> None:
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ConfigError(f"Engine threads must be an int >= 1, got {threads!r}")
        self.model = model
        self.threads = threads or default_threads(model)
        self._vad_model = vad_model
        turn_end_id(model.tokenizer)  # slow the first time: not in a session's open()
        self._cond = threading.Condition()
        self._queues: dict[Session, deque[Job]] = {}  # sessions with queued work
        self._ready: deque[Session] = deque()  # of those, the ones waiting their turn, in order
        self._running: Job | None = None
        self._sessions: dict[str, Session] = {}
        self._tts: dict[str, TTSBackend] = {}  # loaded once, shared by the sessions that speak
        self._session_ids = itertools.count(1)
        self._closing = False
        self._stopped = False
        self._worker = threading.Thread(target=self._work, name="mooer-engine", daemon=True)
        self._worker.start()

    @property
    def vad_model(self) -> VadModel:
        if self._vad_model is None:
            self._vad_model = shared_vad_model()
        return self._vad_model

    @property
    def sessions(self) -> list[Session]:
        """Sessions open, or closing and not yet done."""
        with self._cond:
            return list(self._sessions.values())

    def tts_backend(self, name: str) -> TTSBackend:
        """The text-to-speech backend ``name``, loaded on first use and shared."""
        with self._cond:
            backend = self._tts.get(name)
        if backend is None:
            backend = load_backend(name)
            with self._cond:
                backend = self._tts.setdefault(name, backend)
        return backend

    def check_speech(self, config: SessionConfig) -> None:
        """ConfigError now, not at the first reply, if ``config`` asks for speech the TTS
        backend cannot make (an unknown backend or voice)."""
        if config.speech_output:
            self.tts_backend(config.tts_backend).stream("", "en", config.voice)

    def open(
        self,
        config: SessionConfig | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> Session:
        """A new session; ``on_event`` receives its events (see ``Session`` for threads)."""
        config = config or SessionConfig()
        if not isinstance(config, SessionConfig):
            raise ConfigError(f"expected a SessionConfig, got {type(config).__name__}")
        self.check_speech(config)
        with self._cond:
            if self._closing:
                raise ConfigError("the engine is closed: no new sessions")
            session_id = f"s{next(self._session_ids)}"
        session = Session(self, config, on_event or (lambda event: None), session_id)
        with self._cond:
            self._sessions[session_id] = session
        return session

    def close(self, timeout: float | None = None) -> bool:
        """Close every session (their pending utterances still get finals), finish the queued
        work, then stop the worker. False if that took longer than ``timeout``."""
        with self._cond:
            self._closing = True
        for session in self.sessions:
            session.close(flush=True)
        done = self.wait_idle(timeout=timeout)
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._worker.join(timeout)
        return done

    # -- scheduling, used by Session ---------------------------------------------------------

    def submit(self, session: Session, kind: JobKind, work: Work) -> None:
        """Queue ``work`` (a callable, or an iterator of steps) behind the session's jobs."""
        job = Job(session, kind, _steps(work))
        with self._cond:
            if self._stopped:
                raise ConfigError("the engine is stopped")
            queue = self._queues.get(session)
            if queue is None:
                queue = self._queues[session] = deque()
                self._ready.append(session)
            if kind == "partial":
                for i, queued in enumerate(queue):
                    if queued.kind == "partial" and queued is not self._running:
                        queue[i] = job  # the newer audio makes the queued one stale
                        session.stats.partials_skipped += 1
                        return
            elif kind == "final":
                self._drop(session, queue, lambda queued: queued.kind == "partial")
            queue.append(job)
            self._cond.notify_all()

    def discard(self, session: Session, partials_only: bool) -> None:
        """Drop the session's queued jobs (not the one running), or only its partials."""
        with self._cond:
            queue = self._queues.get(session)
            if queue is None:
                return
            dropped = self._drop(
                session, queue, lambda job: not partials_only or job.kind == "partial"
            )
            if not queue:
                del self._queues[session]
                self._ready.remove(session)
                self._cond.notify_all()
        for job in dropped:  # a started job's cleanup (its finally) runs, outside the lock
            close = getattr(job.steps, "close", None)
            if close is not None:
                close()

    def wait_idle(self, session: Session | None = None, timeout: float | None = None) -> bool:
        """Block until no work of ``session`` (default: any) is queued or running."""

        def idle() -> bool:
            return session not in self._queues if session is not None else not self._queues

        with self._cond:
            return self._cond.wait_for(idle, timeout)

    def forget(self, session: Session) -> None:
        """The session is done (``SessionClosed`` sent)."""
        with self._cond:
            self._sessions.pop(session.id, None)

    def _drop(
        self, session: Session, queue: deque[Job], doomed: Callable[[Job], bool]
    ) -> list[Job]:
        """Remove the doomed jobs that are not running from ``queue``; the removed ones."""
        dropped = [job for job in queue if job is not self._running and doomed(job)]
        for job in dropped:
            queue.remove(job)
        session.stats.partials_skipped += sum(job.kind == "partial" for job in dropped)
        return dropped

    # -- the worker --------------------------------------------------------------------------

    def _work(self) -> None:
        torch.set_num_threads(self.threads)  # this thread's own setting
        while True:
            with self._cond:
                while not self._ready:
                    if self._stopped:
                        return
                    self._cond.wait()
                session = self._next_session()
                job = self._queues[session][0]
                job.started = True
                self._running = job
            more = self._step(job)
            with self._cond:
                self._running = None
                queue = self._queues[session]
                if not more:
                    queue.remove(job)
                if queue:
                    self._ready.append(session)  # to the back of the round
                else:
                    del self._queues[session]
                self._cond.notify_all()

    def _next_session(self) -> Session:
        """The next session in the round, except that a final not yet begun goes first: the
        end of an utterance is when a user waits; partials can wait a step."""
        for session in self._ready:
            head = self._queues[session][0]
            if head.kind == "final" and not head.started:
                self._ready.remove(session)
                return session
        return self._ready.popleft()

    def _step(self, job: Job) -> bool:
        """Run one step; False when the job is done (or failed: the session reports it)."""
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                next(job.steps)
            return True
        except StopIteration:
            return False
        except Exception as exc:  # bad work of one session must not stop the others
            job.session.report_error(exc)
            return False
        finally:
            spent = time.perf_counter() - started
            if spent > 5.0:
                log.warning("session %s: one %s step took %.1f s", job.session.id, job.kind, spent)
