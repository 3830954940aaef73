"""One live session: audio in; turns, partial and final results, chat replies and barge-in out.

The calls (``feed``, ``commit``, ``clear``, ``create_response``...) return at once, on the
caller's thread: they run the voice activity detector inline (about 0.3 ms of one core per
32 ms of audio; ``hear`` leaves it to ``score_heard``, which scores many sessions' windows in
one network call), keep the utterance's audio, and queue the model work for the engine's single
worker thread as jobs, which ``mooer.agent.session_work`` holds: a session's jobs run in order,
a newer partial replaces one still queued, and the utterance's final drops both.

Results arrive as ``mooer.agent.events`` through the ``on_event`` callback given to
``Engine.open``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from mooer.agent import events as ev
from mooer.agent.session_work import Responses, SessionWork
from mooer.asr.partial_context import PartialContext
from mooer.asr.segmenter import MAX_SEGMENT_S
from mooer.asr.vad import (
    PauseBegan,
    SpeechEnded,
    SpeechStarted,
    StreamingVad,
    VadConfig,
    VadEvent,
    check_chunk,
    score_due,
)
from mooer.audio import SAMPLE_RATE, ms_to_samples, samples_to_ms
from mooer.errors import ConfigError, check_number
from mooer.llm.biasing import Hotwords
from mooer.llm.conversation import CHAT, ROLES, Conversation, Message
from mooer.llm.decoding import OFFLINE, STREAMING, DecodingOptions
from mooer.llm.speech import SPOKEN_REPLY

if TYPE_CHECKING:
    from mooer.agent.engine import Engine
    from mooer.asr.speakers import SpeakerLabeller

log = logging.getLogger(__name__)

MODES = ("asr", "ast", "asr+ast", "chat")


@dataclass(frozen=True)
class SessionConfig:
    """What a session does with its audio. Override with ``dataclasses.replace``.

    ``mode``: ``asr`` transcripts, ``ast`` translations, ``asr+ast`` both, ``chat`` transcripts
    and spoken-question replies. ``turn_detection`` False means the client ends each utterance
    with ``commit()`` (no VAD, no barge-in). ``max_segment_s`` caps an utterance (the VAD cuts
    longer speech at its quietest point; it overrides ``vad.max_segment_s``); in manual mode
    partials stop there and the final takes everything. ``auto_response``: chat replies follow
    each utterance without ``create_response()``.

    ``speech_output``: chat replies are also spoken, and in ``ast`` mode final translations
    (``ResponseAudioDelta`` / ``TranslationAudioDelta``), as PCM16 at ``output_sample_rate``
    (24 kHz: the OpenAI Realtime wire rate). A model with a speech head speaks by itself in its
    ``prompt.wav`` voice: a spoken question's reply text is decoded with ``chat_options`` (a
    translation's with ``final_options``, one beam), its audio tokens with ``speech_options``.
    Otherwise, and for typed questions and answers the head left unspoken, the text is spoken
    sentence by sentence with the ``tts_backend`` (see ``mooer.tts.backend``) in its ``voice``
    (None: its default).

    ``instructions``: chat's system turn (OpenAI's ``session.instructions``); "" keeps the
    released one. ``hotwords``: words favoured when the utterances are decoded (see
    ``mooer.llm.biasing``).

    ``partial_context``: how much audio each partial encodes around the new part (see
    ``mooer.asr.partial_context``) and how far apart a long utterance's partials come (at least
    ``partial_interval_ms``); None encodes the whole utterance so far for every partial, whose
    cost then grows with the utterance. Finals always encode the whole utterance.

    ``early_finals``: the final is decoded as soon as a pause begins (one VAD window into it)
    rather than once the pause has lasted the endpoint wait, and kept if that pause ends the
    utterance: finals come up to the wait earlier, decoded from the audio the endpoint would
    give, the pause after its first window taken as silence (``mooer.asr.vad.PauseBegan``),
    however the client chunks its audio, at the cost of a decode for each pause that speech
    goes on after. Not in chat sessions, nor without turn detection.
    """

    mode: str = "asr"
    vad: VadConfig = field(default_factory=VadConfig)
    turn_detection: bool = True
    partial_interval_ms: int = 480  # 0: no partial results
    max_segment_s: float = 20.0
    max_context_tokens: int = 2048  # chat memory, in LLM tokens
    partial_options: DecodingOptions = STREAMING  # token by token: num_beams 1
    partial_context: PartialContext | None = PartialContext()  # None: partials encode it all
    final_options: DecodingOptions = OFFLINE
    chat_options: DecodingOptions = CHAT
    auto_response: bool = True
    barge_in: bool = True  # chat: speech during a reply cancels it
    speech_output: bool = False
    voice: str | None = None
    output_sample_rate: int = 24000
    tts_backend: str = "espeak"
    speech_options: DecodingOptions = SPOKEN_REPLY  # audio tokens of the speech head
    instructions: str = ""
    hotwords: Hotwords | None = None  # favoured in transcripts and translations (partial, final)
    early_finals: bool = False

    @property
    def task(self) -> str:
        """The ``mooer.tasks`` task that the mode's utterances are decoded with."""
        return {"asr": "asr", "chat": "asr", "ast": "ast", "asr+ast": "mtl"}[self.mode]

    def __post_init__(self) -> None:
        _require("mode", self.mode in MODES, f"one of {', '.join(MODES)}")
        _require("vad", isinstance(self.vad, VadConfig), "a VadConfig")
        for name in (
            "turn_detection",
            "auto_response",
            "barge_in",
            "speech_output",
            "early_finals",
        ):
            _require(name, isinstance(getattr(self, name), bool), "True or False")
        interval = check_number(
            self.partial_interval_ms, "SessionConfig.partial_interval_ms", 0, integer=True
        )
        _require(
            "partial_interval_ms",
            interval == 0 or interval >= 100,
            "0 (no partials) or a whole number of milliseconds >= 100",
        )
        check_number(
            self.max_segment_s,
            "SessionConfig.max_segment_s",
            high=MAX_SEGMENT_S,
            above=self.vad.cut_search_s,
        )
        check_number(self.max_context_tokens, "SessionConfig.max_context_tokens", 64, integer=True)
        check_number(
            self.output_sample_rate, "SessionConfig.output_sample_rate", 8000, 192000, integer=True
        )
        _require("voice", self.voice is None or isinstance(self.voice, str), "a string or None")
        _require("tts_backend", isinstance(self.tts_backend, str), "a backend name")
        _require("instructions", isinstance(self.instructions, str), "a string")
        _require(
            "hotwords", self.hotwords is None or isinstance(self.hotwords, Hotwords), "Hotwords"
        )
        for name in ("partial_options", "final_options", "chat_options", "speech_options"):
            _require(name, isinstance(getattr(self, name), DecodingOptions), "a DecodingOptions")
        _require(
            "partial_context",
            self.partial_context is None or isinstance(self.partial_context, PartialContext),
            "a PartialContext or None",
        )
        for name in ("partial_options", "chat_options", "speech_options"):
            _require(
                name,
                getattr(self, name).num_beams == 1,
                "num_beams 1 (decoded token by token)",
            )


def _require(name: str, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(f"SessionConfig.{name}: expected {expected}")


@dataclass
class SessionStats:
    """Counters of one session, for monitoring and benchmarks."""

    audio_s: float = 0.0  # fed so far
    utterances: int = 0
    partials: int = 0  # partial decodes run
    partials_skipped: int = 0  # replaced by a newer one, or made useless by the final, unrun
    partial_audio_s: float = 0.0  # audio the partials encoded (windows, or whole utterances)
    finals: int = 0
    early_finals: int = 0  # begun in a pause (``early_finals``)
    early_finals_kept: int = 0  # the pause ended the utterance: the final was the early one
    responses: int = 0
    responses_cancelled: int = 0
    errors: int = 0
    final_latency_s: list[float] = field(default_factory=list)
    """From the end of each utterance (endpoint or commit) to its final result being sent."""
    reply_latency_s: list[float] = field(default_factory=list)
    """Chat: from the end of the utterance (or create_response) to the reply's first text."""


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """The VAD's tiny windows run fastest on one thread (see ``VadModel``)."""
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


class Session:
    """One live audio stream. Made by ``Engine.open``; see the module docstring.

    ``feed``, ``commit``, ``clear``, ``add_message``, ``delete_item``, ``rewrite_item``,
    ``create_response``, ``cancel_response``, ``reset``, ``set_instructions`` and ``close`` may be
    called from any thread (one at a time is the usual case); ``on_event`` is called from the thread that calls them (speech started/stopped,
    committed) and from the engine's worker (results), never concurrently for one session. It
    must return quickly and must not call back into the session.
    """

    def __init__(
        self,
        engine: Engine,
        config: SessionConfig,
        on_event: Callable[[ev.Event], None],
        session_id: str,
        speakers: SpeakerLabeller | None = None,
    ) -> None:
        self.id = session_id
        self.config = config
        self.speakers = speakers  # labels each final's speaker (on the worker), or None
        self.engine = engine
        self.model = engine.model
        self.stats = SessionStats()
        self.outbox = ev.Outbox(session_id, on_event)
        self._lock = threading.RLock()  # the caller-side state below
        self._vad = (
            StreamingVad(
                replace(
                    config.vad,
                    max_segment_s=config.max_segment_s,
                    # a chat turn is a whole question, not a sentence: its wait does not
                    # shrink, nor is it cut at a short pause
                    shrink_s=None if config.mode == "chat" else config.vad.shrink_s,
                    pause_cut_s=None if config.mode == "chat" else config.vad.pause_cut_s,
                ),
                engine.vad_model,
                pauses=config.early_finals,  # an early final in each (none in chat: no shrink)
            )
            if config.turn_detection
            else None
        )
        self._offset = 0  # stream samples before the VAD's current stream (clear() restarts it)
        self._buffer: list[np.ndarray] = []  # manual turns: audio since the last commit
        self._buffered = 0
        self._item: str | None = None  # the open utterance
        self._item_start = 0  # its first sample, in the VAD's stream
        self._next_partial = 0  # utterance length (samples) at which the next partial is due
        self._early_pause: int | None = None  # the pause an early final of _item was begun in
        self._items = itertools.count(1)
        self._responses = Responses(session_id, self.outbox)
        self._closed = False  # no more input accepted
        self._finished = threading.Event()
        self._work = SessionWork(self, self._responses)  # the worker thread's side

    # -- input (caller's thread) ------------------------------------------------------------

    def feed(self, samples: np.ndarray) -> None:
        """Take 16 kHz mono float32 samples in [-1, 1], any number at a time.

        Raises AudioError for a chunk that is not (N,) floats or holds NaN/inf; the chunk is
        dropped and the session goes on.
        """
        self.hear(samples)
        score_heard([self])

    def hear(self, samples: np.ndarray) -> None:
        """Take samples as ``feed`` does, but leave the VAD's scoring of them to the next
        ``score_heard`` that names this session: a server scores the audio of all its sessions
        together, in one network call per round of windows (``mooer.asr.vad.score_due``).
        The session's ``commit``, ``clear`` and ``close`` score what it heard first."""
        chunk = check_chunk(samples)
        with self._lock:
            self._check_open("feed")
            self.stats.audio_s += chunk.size / SAMPLE_RATE
            if self._vad is None:
                self._buffer_audio(chunk)
                self._partial_if_due()
            else:
                self._vad.hear(chunk)

    def commit(self) -> str | None:
        """End the current utterance now; its id, or None (and an Error) if there is none."""
        with self._lock:
            self._check_open("commit")
            item = self._end_utterance()
            if item is None:
                self.outbox.emit(
                    ev.Error("empty_commit", f"session {self.id}: no speech to commit")
                )
            return item

    def clear(self) -> None:
        """Drop the audio of the utterance in progress (it gets no results)."""
        with self._lock:
            self._check_open("clear")
            if self._vad is not None:
                _score_vads([self])  # what it heard came before the clear
                self._offset += self._vad.samples_received
                self._vad.reset()
            self._buffer, self._buffered, self._item = [], 0, None
            self._early_pause = None
            self.engine.discard(self, partials_only=True)

    def add_message(
        self,
        text: str,
        role: str = "user",
        item_id: str | None = None,
        after: str | None = None,
        first: bool = False,
    ) -> str:
        """Chat: a typed message remembered at once (a user one is answered by the next
        ``create_response()``); its item id (``item_id``, or a new one).

        It goes last, or first, or after the message ``after``. System messages are system
        turns at their place in the conversation.
        """
        self._require_chat("add_message")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"session {self.id}: add_message needs a non-empty string")
        if role not in ROLES:
            raise ConfigError(f"session {self.id}: role must be one of {', '.join(ROLES)}")
        with self._lock:
            self._check_open("add_message")
            item = item_id or self._new_item()
            message = Message(role, text.strip(), item)
            self._control(lambda work: work.add_message(message, after, first))
            return item

    def delete_item(self, item_id: str) -> None:
        """Chat: forget the message (or spoken turn) ``item_id``; unknown ids are ignored."""
        self._require_chat("delete_item")
        with self._lock:
            self._check_open("delete_item")
            self._control(lambda work: work.delete(item_id))

    def rewrite_item(self, item_id: str, text: str) -> None:
        """Chat: the message ``item_id`` is remembered as ``text`` (an answer cut to what the
        listener heard, flagged interrupted); unknown ids are ignored."""
        self._require_chat("rewrite_item")
        with self._lock:
            self._check_open("rewrite_item")
            self._control(lambda work: work.conversation.rewrite(item_id, text))

    def create_response(
        self,
        instructions: str = "",
        remember: bool = True,
        speak: bool | None = None,
        context: Sequence[tuple[str, str]] | None = None,
    ) -> str:
        """Chat: reply to the spoken turn waiting for its answer, else to the conversation as
        remembered; returns the response id.

        ``instructions``: the reply's own, besides the session's; ``remember`` False: an
        out-of-band reply, not remembered; ``speak``: spoken or not (default: as
        ``speech_output``); ``context``: (role, text) messages the reply answers instead of the
        conversation (the waiting turn keeps waiting; the reply is remembered if ``remember``).
        """
        self._require_chat("create_response")
        messages = None
        if context is not None:
            messages = tuple(Message(role, text) for role, text in context)
            for i, message in enumerate(messages):
                if message.role not in ROLES or not isinstance(message.text, str):
                    raise ConfigError(
                        f"session {self.id}: context[{i}] must be (a role of {ROLES}, a text), "
                        f"got {(message.role, message.text)!r}"
                    )
        with self._lock:
            self._check_open("create_response")
            response = self._responses.new(
                self._new_item(),
                self.config.speech_output if speak is None else speak,
                instructions=instructions,
                remember=remember,
                context=messages,
            )
            asked = time.perf_counter()
            self.engine.submit(self, "response", self._work.respond_to_pending(response, asked))
            return response.response_id

    def cancel_response(self) -> bool:
        """Chat: stop the reply being generated (and any queued); False if there was none."""
        with self._lock:
            return self._responses.cancel_all()

    def reset(self) -> None:
        """Chat: forget the conversation (replies in progress are cancelled)."""
        with self._lock:
            self._check_open("reset")
            self._responses.cancel_all()
            self.engine.submit(self, "control", self._work.forget)

    def set_instructions(self, instructions: str) -> None:
        """Chat's new system turn, from the next reply on; the turns are kept (their cache is
        rebuilt under the new instructions)."""
        if not isinstance(instructions, str):
            raise ConfigError(f"session {self.id}: instructions must be a string")
        with self._lock:
            self._check_open("set_instructions")
            self.config = replace(self.config, instructions=instructions)
            if self.conversation is not None:
                conversation = self.conversation

                def change() -> None:
                    conversation.instructions = instructions

                self.engine.submit(self, "control", change)

    def _control(self, change: Callable[[SessionWork], None]) -> None:
        """Run ``change`` on the worker, in order with the session's other work."""
        work = self._work
        self.engine.submit(self, "control", lambda: change(work))

    def close(self, flush: bool = True) -> None:
        """End the session. ``flush``: the utterance in progress still gets its final results
        (no reply); otherwise queued work is dropped. ``SessionClosed`` is the last event."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._responses.cancel_all()
            if flush:
                self._end_utterance()
            else:
                self.outbox.mute()
                self.engine.discard(self, partials_only=False)
            self.engine.submit(self, "control", self._finish)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until ``SessionClosed`` was sent; False on timeout."""
        return self._finished.wait(timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the worker has no queued work of this session; False on timeout."""
        return self.engine.wait_idle(self, timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def conversation(self) -> Conversation | None:
        """Chat mode's memory (owned by the worker thread: read it only while the session is
        idle)."""
        return self._work.conversation

    @property
    def open_item(self) -> str | None:
        """The id of the utterance in progress (a partial decoded after it ended is dropped)."""
        return self._item

    # -- caller-side helpers (hold self._lock) ----------------------------------------------

    def _check_open(self, action: str) -> None:
        if self._closed:
            raise ConfigError(f"session {self.id} is closed: cannot {action}")

    def _require_chat(self, action: str) -> None:
        if self.conversation is None:
            raise ConfigError(
                f"session {self.id}: {action} needs mode 'chat', the session's mode is "
                f"{self.config.mode!r}"
            )

    def _new_item(self) -> str:
        return f"item_{self.id}_{next(self._items)}"

    def _buffer_audio(self, chunk: np.ndarray) -> None:
        if self._item is None:
            self._item = self._new_item()
            self._next_partial = self._interval()
        self._buffer.append(chunk)
        self._buffered += chunk.size

    def _on_vad(self, found: list[VadEvent]) -> None:
        for event in found:
            if isinstance(event, SpeechStarted):
                self._item, self._item_start = self._new_item(), event.sample
                self._next_partial = self._interval()
                self.stats.utterances += 1
                self.outbox.emit(
                    ev.SpeechStarted(self._item, samples_to_ms(self._offset + event.sample))
                )
                if self.config.barge_in:
                    self._responses.cancel_all()
            elif isinstance(event, PauseBegan) and self._item is not None:
                self._early_pause = event.sample
                self.stats.early_finals += 1
                work = self._work.early_final(self._item, event.audio, event.sample)
                self.engine.submit(self, "final", work)
            elif isinstance(event, SpeechEnded) and self._item is not None:
                item, self._item = self._item, None
                self.outbox.emit(ev.SpeechStopped(item, samples_to_ms(self._offset + event.end)))
                early = event.pause if event.pause == self._early_pause else None
                self._early_pause = None
                self._commit_audio(item, event.audio, event.waited / SAMPLE_RATE, early)

    def speech_resumed(self, item: str, pause: int) -> bool:
        """Whether speech came back in the utterance ``item`` after the pause from ``pause``
        (an early final begun in it is not worth decoding)."""
        with self._lock:
            now = self._vad.pause_start if self._vad is not None else None
            return item == self._item and now != pause

    def sentence_end_seen(self, item: str) -> None:
        """A partial transcript of the utterance ``item`` shows a finished sentence with more
        words after it: the VAD cuts the utterance at its best pause so far (or at the next
        short one; see ``StreamingVad.hint_sentence_end``). Ignored once ``item`` has ended."""
        with self._lock:
            if self._closed or self._vad is None or item != self._item:
                return
            self._on_vad(self._vad.hint_sentence_end(self._item_start))

    def _end_utterance(self) -> str | None:
        """Close the utterance in progress, if any; its id."""
        if self._vad is not None:
            _score_vads([self])  # what it heard, even while closing
            item = self._item
            self._on_vad(self._vad.flush())
            return item if item is not None and self._item is None else None
        if not self._buffered:
            return None
        item, audio = self._item, np.concatenate(self._buffer)
        self._buffer, self._buffered, self._item = [], 0, None
        self.stats.utterances += 1
        assert item is not None
        self._commit_audio(item, audio)
        return item

    def _commit_audio(
        self, item: str, audio: np.ndarray, waited: float = 0.0, early: int | None = None
    ) -> None:
        """Queue the final of the utterance ``item``; ``waited``: seconds of pause that ended
        it; ``early``: that pause's first sample, where an early final was begun in it."""
        self.outbox.emit(ev.Committed(item))
        endpoint = time.perf_counter()
        response = None
        if self.conversation is not None and self.config.auto_response and not self._closed:
            response = self._responses.new(self._new_item(), self.config.speech_output)
        work = self._work.final(item, audio, endpoint, response, waited, early)
        self.engine.submit(self, "final", work)

    def _interval(self, length: int = 0) -> int:
        """Samples from a partial of an utterance ``length`` samples long to its next one (a
        long utterance's come further apart: ``PartialContext.long_interval_ms``)."""
        interval = ms_to_samples(self.config.partial_interval_ms)
        context = self.config.partial_context
        return interval if context is None else context.interval_after(length, interval)

    def _partial_if_due(self) -> None:
        if self._item is None or not self.config.partial_interval_ms:
            return
        if self._vad is None:
            length = self._buffered
            if length > self.config.max_segment_s * SAMPLE_RATE:
                return
        else:
            length = self._vad.samples_received - self._item_start
        if length < self._next_partial:
            return
        if self._vad is None:
            self._buffer = [np.concatenate(self._buffer)]
            audio = self._buffer[0]
        else:
            audio = self._vad.current_segment()
        self._next_partial = length + self._interval(length)
        item = self._item
        self.engine.submit(self, "partial", self._work.partial(item, audio))

    def _finish(self) -> None:
        self.outbox.close()
        self._finished.set()
        self.engine.forget(self)

    # -- events -----------------------------------------------------------------------------

    def report_error(self, exc: BaseException) -> None:
        """A failure of model work (the engine reports its jobs' here): an Error event; the
        session goes on."""
        self.stats.errors += 1
        log.warning("session %s: %s", self.id, exc, exc_info=exc)
        self.outbox.emit(ev.Error("model_error", f"{type(exc).__name__}: {exc}"))


def score_heard(sessions: Sequence[Session]) -> None:
    """Run the VAD over the audio the ``sessions`` heard (``Session.hear``), all of them
    together, then do with what it found what each one's ``feed`` would have done: turns,
    finals and partials. Closed sessions are skipped (their ``close`` scored what they heard)."""
    with contextlib.ExitStack() as held:
        for session in sessions:
            held.enter_context(session._lock)
        _score_vads([s for s in sessions if s._vad is not None and not s._closed])


def _score_vads(sessions: Sequence[Session]) -> None:
    """``score_heard``'s work, for sessions with a VAD whose locks are held."""
    with _one_torch_thread():
        found = score_due([s._vad for s in sessions])  # type: ignore[misc]  # not None
    for session, events in zip(sessions, found):
        session._on_vad(events)
        session._partial_if_due()
