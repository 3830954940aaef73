"""The shared model and the one worker thread that runs all model work, fairly across clients.

The speech LLM is loaded once; every client queues its work here: live sessions, and requests
(an HTTP upload, made by ``schedule``). One worker runs it, because on a CPU or a single
accelerator parallel decodes only slow each other down, and it takes the clients round-robin,
one step of one job at a time: a step is one decode (a partial, a final, or one segment of an
uploaded file), one token of a chat reply, or one spoken sentence. A client with much work (a
long utterance, an hour-long upload) therefore delays each other client by at most one step
per turn of the round, and is itself served once per round however many others there are. A
partial still queued is replaced by its session's newer one (finals are never dropped), and an
utterance's final drops its queued partials and jumps the round (it is what a user waits for
at the end of a turn). The worker keeps a record of the steps it ran (``steps_run``).

With a batching LLM backend (vLLM) a step may yield a ``Future``: the decode it started is
running elsewhere, and the job is parked until the future is done, while the worker runs the
other clients' steps (which start their decodes too, so that vLLM batches them all). A parked
job keeps its place: its client's other jobs wait behind it. Audio to encode waits the same way
(``embed``): the utterances queued at the same moment are encoded as one padded batch
(``mooer.agent.encode_batch``), a step of the worker's own between the clients' steps. The greedy
answers asked of the hf backend through ``llm_backend`` (the partials) are batched the same way
(``mooer.agent.decode_batch``).

Threads: ``on_event`` runs on the worker thread for results (transcripts, translations,
replies) and on the caller's thread for what ``feed``/``commit``/``close`` find at once (speech
started/stopped, committed), never concurrently for one session; a server bridges both to its
event loop with ``loop.call_soon_threadsafe``. The worker uses ``threads`` torch threads; the
VAD inside ``Session.feed`` (and ``score_heard``, which scores many sessions' heard audio
together) runs on one torch thread of the caller's (see ``VadModel``).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

import numpy as np
import torch

from mooer.agent.batching import Asked, Batch
from mooer.agent.decode_batch import BatchedBackend, DecodeBatch, DecodeBatchConfig
from mooer.agent.encode_batch import Embeddings, EncodeBatch, EncodeBatchConfig
from mooer.agent.events import Event
from mooer.agent.session import Session, SessionConfig
from mooer.asr.quantize import weight_count
from mooer.asr.speakers import SpeakerConfig, SpeakerEncoder, SpeakerLabeller
from mooer.asr.vad import VadModel, shared_vad_model
from mooer.errors import ConfigError, check_number
from mooer.llm.backend import Waiting
from mooer.llm.generation import Row, turn_end_id
from mooer.model import SpeechLLM
from mooer.tts.backend import TTSBackend, load_backend

log = logging.getLogger(__name__)

JobKind = Literal["partial", "final", "response", "control", "request"]
Work = Iterator[Future | None] | Callable[[], object]
T = TypeVar("T")

RECORD_LENGTH = 4096  # steps kept in the engine's record


class Client(Protocol):
    """Who queues work: a live ``Session`` or a ``Request``."""

    @property
    def id(self) -> str: ...

    def report_error(self, exc: BaseException) -> None:
        """A step of this client's work raised ``exc``; the job is dropped."""


class Request(Generic[T]):
    """Offline work (an uploaded file) queued beside the live sessions as a client of its own.

    ``future`` gets what the work's generator returns, or the exception it raised; cancelling
    it (the caller went away) stops the work at its next step.
    """

    def __init__(self, request_id: str, work: Generator[Future | None, None, T]) -> None:
        self.id = request_id
        self.future: Future[T] = Future()
        self._work = work

    def steps(self) -> Iterator[Future | None]:
        """The work's steps, passing on the decodes it waits for (see ``Engine``)."""
        while not self.future.cancelled():
            try:
                waits_for = next(self._work)
            except StopIteration as done:
                if self.future.set_running_or_notify_cancel():  # False: cancelled meanwhile
                    self.future.set_result(done.value)
                return
            yield waits_for
        self._work.close()

    def report_error(self, exc: BaseException) -> None:
        if self.future.set_running_or_notify_cancel():
            self.future.set_exception(exc)


@dataclass(frozen=True)
class StepRecord:
    """One step the worker ran: the how-manyth (``step``, from 0), whose, of which kind of job,
    the number of steps begun before that job was queued (``queued_at``: a job that waited for
    nothing has ``step == queued_at``), and who else had work waiting for a turn (in their
    order in the round)."""

    step: int
    client: str
    kind: JobKind
    queued_at: int
    waiting: tuple[str, ...]


@dataclass(eq=False)
class Job:
    """Queued work of one client; each ``next(steps)`` is one step on the worker."""

    client: Client
    kind: JobKind
    steps: Iterator[Future | None]
    queued_at: int = 0  # steps begun before it was queued
    started: bool = False


def _steps(work: Work) -> Iterator[Future | None]:
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
    return 1 if weight_count(model) < SMALL_MODEL_PARAMS else available_cores()


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
    session with turn detection. ``encode_batch``: the bounds of a batched encoder forward;
    ``decode_batch``: of a batched greedy decode. ``llm_backend``: the model's LLM backend with
    its greedy answers batched; what the sessions decode with.
    """

    def __init__(
        self,
        model: SpeechLLM,
        threads: int | None = None,
        vad_model: VadModel | None = None,
        encode_batch: EncodeBatchConfig | None = None,
        decode_batch: DecodeBatchConfig | None = None,
    ) -> None:
        if threads is not None:
            check_number(threads, "Engine threads", low=1, integer=True)
        self.model = model
        self.threads = threads or default_threads(model)
        self._vad_model = vad_model
        turn_end_id(model.tokenizer)  # slow the first time: not in a session's open()
        self._cond = threading.Condition()
        self._queues: dict[Client, deque[Job]] = {}  # clients with queued work
        self._ready: deque[Client] = deque()  # of those, the ones waiting their turn, in order
        self._running: Job | None = None
        self._parked: dict[Client, Job] = {}  # jobs waiting for their future (not in _ready)
        self._record: deque[StepRecord] = deque(maxlen=RECORD_LENGTH)
        self._encodes = EncodeBatch(model, encode_batch or EncodeBatchConfig())
        self._decodes = DecodeBatch(model, decode_batch or DecodeBatchConfig())
        self.llm_backend = BatchedBackend(model, self._answer)
        self._batches: tuple[Batch, ...] = (self._encodes, self._decodes)  # due first, run first
        self._batch_sizes: dict[Batch, deque[int]] = {
            batch: deque(maxlen=RECORD_LENGTH) for batch in self._batches
        }
        self._resumed = 0  # clients the running batch put first in the round
        self._steps_begun = 0
        self._sessions: dict[str, Session] = {}
        self._tts: dict[str, TTSBackend] = {}  # loaded once, shared by the sessions that speak
        self.speaker_encoder = SpeakerEncoder()  # loaded on first use, shared by the labellers
        self._session_ids = itertools.count(1)
        self._request_ids = itertools.count(1)
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
            if self.model.has_speech_head and self.model.llm_backend.name != "hf":
                raise ConfigError(
                    "speech_output on a model with a speech head needs the LLM's hidden states, "
                    f"which the {self.model.llm_backend.name} LLM backend does not return: "
                    "serve it with --llm-backend hf"
                )
            self.tts_backend(config.tts_backend).stream("", "en", config.voice)

    def speaker_labeller(self, config: SpeakerConfig | None = None) -> SpeakerLabeller:
        """A new set of speakers (a meeting's) to pass to ``open``; ``ConfigError`` naming the
        install when resemblyzer is missing. The encoder loads on its first label."""
        if not self.speaker_encoder.available():
            self.speaker_encoder.load()  # raises, saying what to install
        return SpeakerLabeller(self.speaker_encoder, config)

    def open(
        self,
        config: SessionConfig | None = None,
        on_event: Callable[[Event], None] | None = None,
        speakers: SpeakerLabeller | None = None,
    ) -> Session:
        """A new session; ``on_event`` receives its events (see ``Session`` for threads);
        ``speakers``: its finals carry who spoke them (sessions may share one labeller, one
        after another: a meeting's numbering runs on)."""
        config = config or SessionConfig()
        if not isinstance(config, SessionConfig):
            raise ConfigError(f"expected a SessionConfig, got {type(config).__name__}")
        self.check_speech(config)
        with self._cond:
            if self._closing:
                raise ConfigError("the engine is closed: no new sessions")
            session_id = f"s{next(self._session_ids)}"
        session = Session(self, config, on_event or (lambda event: None), session_id, speakers)
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

    def schedule(
        self, work: Generator[Future | None, None, T], label: str = "request"
    ) -> Future[T]:
        """Run ``work`` on the worker as a client of its own, one step (``next``) per turn of
        the round; the future gets its return value. For offline work such as an uploaded
        file, a segment per step: see the module docstring for what that guarantees."""
        with self._cond:
            if self._closing:
                raise ConfigError("the engine is closed: no new requests")
            request: Request[T] = Request(f"{label}{next(self._request_ids)}", work)
            self._enqueue(Job(request, "request", request.steps()))
        return request.future

    def backlog(self) -> list[str]:
        """Ids of the clients with work queued or running: the running one, then the round."""
        with self._cond:
            running = [self._running.client.id] if self._running is not None else []
            return running + [client.id for client in self._ready]

    def steps_run(self) -> list[StepRecord]:
        """The worker's record of the steps it ran, oldest first (the last ``RECORD_LENGTH``)."""
        with self._cond:
            return list(self._record)

    def encode_batches(self) -> list[int]:
        """The item counts of the encoder forwards run, oldest first (the last
        ``RECORD_LENGTH``)."""
        with self._cond:
            return list(self._batch_sizes[self._encodes])

    def decode_batches(self) -> list[int]:
        """The answer counts of the batched greedy decodes run, oldest first (the last
        ``RECORD_LENGTH``)."""
        with self._cond:
            return list(self._batch_sizes[self._decodes])

    def embed(self, waves: Sequence[np.ndarray]) -> Waiting[Embeddings]:
        """Engine work (call it in a job's step): ``waves`` (16 kHz float32) as LLM input
        embeddings (B, Ta, H) and lengths (B,), encoded in the worker's next batched forward
        with whatever else is queued then; ``model.embed`` in effect."""
        with self._cond:
            future = self._encodes.add(waves, self._steps_begun, len(self._ready))
            self._cond.notify_all()
        try:
            yield future
        finally:
            future.cancel()  # the job was dropped while waiting; a no-op once encoded
        return future.result()

    def _answer(self, row: Row) -> Future[str]:
        """Queue ``row`` for the worker's next batched greedy decode (``llm_backend``'s)."""
        with self._cond:
            future = self._decodes.add([row], self._steps_begun, len(self._ready))
            self._cond.notify_all()
        return future

    # -- scheduling, used by Session ---------------------------------------------------------

    def submit(self, session: Session, kind: JobKind, work: Work) -> None:
        """Queue ``work`` (a callable, or an iterator of steps) behind the session's jobs."""
        job = Job(session, kind, _steps(work))
        with self._cond:
            if self._stopped:
                raise ConfigError("the engine is stopped")
            queue = self._queues.get(session)
            if kind == "partial" and queue is not None:
                for i, queued in enumerate(queue):
                    if queued.kind == "partial" and not queued.started:
                        job.queued_at = self._steps_begun
                        queue[i] = job  # the newer audio makes the queued one stale
                        session.stats.partials_skipped += 1
                        return
            elif kind == "final" and queue is not None:
                self._drop(session, queue, lambda queued: queued.kind == "partial")
            self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        """Append ``job`` to its client's queue, the client to the round if it was idle (lock
        held)."""
        job.queued_at = self._steps_begun
        queue = self._queues.get(job.client)
        if queue is None:
            queue = self._queues[job.client] = deque()
            self._ready.append(job.client)
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
            if not queue and session in self._queues:  # not when _drop made it idle
                del self._queues[session]
                self._ready.remove(session)
                self._cond.notify_all()
        for job in dropped:  # a started job's cleanup (its finally) runs, outside the lock
            close = getattr(job.steps, "close", None)
            if close is not None:
                close()

    def wait_idle(self, client: Client | None = None, timeout: float | None = None) -> bool:
        """Block until no work of ``client`` (default: any) is queued or running."""

        def idle() -> bool:
            return client not in self._queues if client is not None else not self._queues

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
        if self._parked.get(session) in dropped:  # the client was out of the round
            del self._parked[session]
            if queue:
                self._ready.append(session)
            else:
                del self._queues[session]  # idle: new work puts it back in the round
            self._cond.notify_all()
        session.stats.partials_skipped += sum(job.kind == "partial" for job in dropped)
        return dropped

    # -- the worker --------------------------------------------------------------------------

    def _work(self) -> None:
        torch.set_num_threads(self.threads)  # this thread's own setting
        while True:
            with self._cond:
                while not self._ready and not self._batches_pending():
                    if self._stopped:
                        return
                    self._cond.wait()
                batch = self._due_batch()
                if batch is not None:
                    taken = batch.take()
                else:
                    taken = None
                    client = self._next_client()
                    job = self._queues[client][0]
                    job.started = True
                    self._running = job
                    waiting = tuple(other.id for other in self._ready)
                    record = StepRecord(
                        self._steps_begun, client.id, job.kind, job.queued_at, waiting
                    )
                    self._record.append(record)
                    self._steps_begun += 1
            if batch is not None:
                self._run_batch(batch, taken)
                continue
            more, waits_for = self._step(job)
            with self._cond:
                self._running = None
                queue = self._queues[client]
                if not more:
                    queue.remove(job)
                if waits_for is not None:
                    self._parked[client] = job  # back in the round when its future is done
                elif queue:
                    self._ready.append(client)  # to the back of the round
                else:
                    del self._queues[client]
                self._cond.notify_all()
            if waits_for is not None:
                waits_for.add_done_callback(lambda _, c=client, j=job: self._unpark(c, j))

    def _batches_pending(self) -> bool:
        return any(batch.pending for batch in self._batches)

    def _due_batch(self) -> Batch | None:
        """The batch the worker runs now, if one is due (lock held)."""
        idle = not self._ready
        for batch in self._batches:
            if batch.due(self._steps_begun, idle=idle):
                return batch
        return None

    def _run_batch(self, batch: Batch, taken: list[Asked]) -> None:
        """Run one batched forward (encoder) or decode. Its jobs go on first, in their order
        (``_unpark``): they have waited for a turn of the round already, for the others to join
        the batch."""
        with self._cond:
            self._resumed = 0
        with torch.inference_mode():
            items = batch.run(taken)
        if items:
            with self._cond:
                self._batch_sizes[batch].append(items)

    def _unpark(self, client: Client, job: Job) -> None:
        """``job``'s future is done: its client rejoins the round (unless the job was dropped)."""
        with self._cond:
            if self._parked.get(client) is job:
                del self._parked[client]
                if threading.current_thread() is self._worker:  # by _run_batch
                    self._ready.insert(self._resumed, client)
                    self._resumed += 1
                else:
                    self._ready.append(client)
                self._cond.notify_all()

    def _next_client(self) -> Client:
        """The next client in the round, except that a final not yet begun goes first: the
        end of an utterance is when a user waits; partials and uploads can wait a step."""
        for client in self._ready:
            head = self._queues[client][0]
            if head.kind == "final" and not head.started:
                self._ready.remove(client)
                return client
        return self._ready.popleft()

    def _step(self, job: Job) -> tuple[bool, Future | None]:
        """Run one step: False when the job is done (or failed: its client reports it), and
        the future it waits for, if it yielded one not done yet."""
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                waits_for = next(job.steps)
            if isinstance(waits_for, Future) and not waits_for.done():
                return True, waits_for
            return True, None
        except StopIteration:
            return False, None
        except Exception as exc:  # bad work of one client must not stop the others
            job.client.report_error(exc)
            return False, None
        finally:
            spent = time.perf_counter() - started
            if spent > 5.0:
                log.warning("%s: one %s step took %.1f s", job.client.id, job.kind, spent)
