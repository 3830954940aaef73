"""One live session: audio in; turns, partial and final results, chat replies and barge-in out.

The calls (``feed``, ``commit``, ``clear``, ``create_response``...) return at once: they run the
voice activity detector inline (about 0.3 ms of one core per 32 ms of audio) and queue any work
for the speech LLM on the engine's single worker thread as a job. A session's jobs run in order:

- partial: re-decode the growing utterance greedily every ``partial_interval_ms``; a newer
  partial replaces one still queued, and the utterance's final drops both;
- final: decode the whole utterance with the offline settings (equal to ``transcribe()``), and
  in chat mode go on to the reply, generated one token per step so that the worker can serve
  other sessions between tokens and a barge-in stops it before the next token.

Spoken output (``speech_output``) takes one of two ways, by the model: one with the MooER speech
head (omni, S2ST) speaks by itself, its latents vocoded as they are generated (``s2s_chat`` on
the conversation's cache for replies, ``s2s_trans`` for translations); any other model's text is
spoken sentence by sentence by the TTS backend.

Results arrive as ``mooer.agent.events`` through the ``on_event`` callback given to
``Engine.open``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from mooer.agent import events as ev
from mooer.agent.stable_text import TRANSLATION_AGREE, StableText
from mooer.agent.vad import (
    SpeechEnded,
    SpeechStarted,
    StreamingVad,
    VadConfig,
    VadEvent,
    check_chunk,
)
from mooer.audio import SAMPLE_RATE
from mooer.errors import ConfigError
from mooer.llm.conversation import CHAT, Conversation, Generation, Reply
from mooer.llm.decoding import OFFLINE, STREAMING, DecodingOptions, generate_ids, splice
from mooer.llm.prompts import build_prompt
from mooer.llm.speech import SPOKEN_REPLY, SpeechGeneration, SpeechReply, spoken_reply
from mooer.speak import speak_natively, speak_reply, text_to_speech
from mooer.text import language_of
from mooer.transcribe import MAX_SEGMENT_S, PROMPT_OF_TASK, read_answer, transcribe
from mooer.tts.backend import float_to_pcm16, split_sentences

if TYPE_CHECKING:
    from mooer.agent.engine import Engine

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
    released one.
    """

    mode: str = "asr"
    vad: VadConfig = field(default_factory=VadConfig)
    turn_detection: bool = True
    partial_interval_ms: int = 480  # 0: no partial results
    max_segment_s: float = 20.0
    max_context_tokens: int = 2048  # chat memory, in LLM tokens
    partial_options: DecodingOptions = STREAMING  # token by token: num_beams 1
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

    def __post_init__(self) -> None:
        _require("mode", self.mode in MODES, f"one of {', '.join(MODES)}")
        _require("vad", isinstance(self.vad, VadConfig), "a VadConfig")
        for name in ("turn_detection", "auto_response", "barge_in", "speech_output"):
            _require(name, isinstance(getattr(self, name), bool), "True or False")
        interval = self.partial_interval_ms
        _require(
            "partial_interval_ms",
            _is_int(interval) and (interval == 0 or interval >= 100),
            "0 (no partials) or a whole number of milliseconds >= 100",
        )
        seconds = self.max_segment_s
        _require(
            "max_segment_s",
            _is_number(seconds) and self.vad.cut_search_s < seconds <= MAX_SEGMENT_S,
            f"a number of seconds in ({self.vad.cut_search_s} (vad.cut_search_s), {MAX_SEGMENT_S}]",
        )
        _require(
            "max_context_tokens",
            _is_int(self.max_context_tokens) and self.max_context_tokens >= 64,
            "an int >= 64",
        )
        _require(
            "output_sample_rate",
            _is_int(self.output_sample_rate) and 8000 <= self.output_sample_rate <= 192000,
            "an integer rate from 8000 to 192000 Hz",
        )
        _require("voice", self.voice is None or isinstance(self.voice, str), "a string or None")
        _require("tts_backend", isinstance(self.tts_backend, str), "a backend name")
        _require("instructions", isinstance(self.instructions, str), "a string")
        for name in ("partial_options", "final_options", "chat_options", "speech_options"):
            _require(name, isinstance(getattr(self, name), DecodingOptions), "a DecodingOptions")
        for name in ("partial_options", "chat_options", "speech_options"):
            _require(
                name,
                getattr(self, name).num_beams == 1,
                "num_beams 1 (decoded token by token)",
            )


def _require(name: str, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(f"SessionConfig.{name}: expected {expected}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


@dataclass
class SessionStats:
    """Counters of one session, for monitoring and benchmarks."""

    audio_s: float = 0.0  # fed so far
    utterances: int = 0
    partials: int = 0  # partial decodes run
    partials_skipped: int = 0  # replaced by a newer one, or made useless by the final, unrun
    finals: int = 0
    responses: int = 0
    responses_cancelled: int = 0
    errors: int = 0
    final_latency_s: list[float] = field(default_factory=list)
    """From the end of each utterance (endpoint or commit) to its final result being sent."""
    reply_latency_s: list[float] = field(default_factory=list)
    """Chat: from the end of the utterance (or create_response) to the reply's first text."""


@dataclass
class _Track:
    """The partial state of the utterance being decoded (worker thread only)."""

    item_id: str
    transcript: StableText = field(default_factory=StableText)
    translation: StableText = field(default_factory=lambda: StableText(TRANSLATION_AGREE))


# -- replies ----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Response:
    """A chat reply that was asked for; ``cancelled`` is set from any thread."""

    response_id: str
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: bool = False  # ResponseStarted was sent (under the emit lock)


@dataclass(eq=False)
class _UserTurn:
    """A user turn waiting for its reply: spoken (audio embeds) or typed (embeds None)."""

    item_id: str
    question: str
    audio_embeds: torch.Tensor | None  # (Ta, H)


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


_NO_AUDIO = np.zeros(0, dtype=np.int16)


def _pcm_bytes(pcm: np.ndarray) -> bytes:
    """(N,) int16 -> little-endian PCM16 bytes, as every wire format here carries them."""
    return pcm.astype("<i2").tobytes()


def _ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE


class Session:
    """One live audio stream. Made by ``Engine.open``; see the module docstring.

    ``feed``, ``commit``, ``clear``, ``create_response``, ``cancel_response``, ``reset``,
    ``set_instructions`` and ``close`` may be called from any thread (one at a time is the usual
    case); ``on_event`` is called from the thread that calls them (speech started/stopped,
    committed) and from the engine's worker (results), never concurrently for one session. It
    must return quickly and must not call back into the session.
    """

    def __init__(
        self,
        engine: Engine,
        config: SessionConfig,
        on_event: Callable[[ev.Event], None],
        session_id: str,
    ) -> None:
        self.id = session_id
        self.config = config
        self.engine = engine
        self.model = engine.model
        self.stats = SessionStats()
        self._on_event = on_event
        self._emit_lock = threading.Lock()
        self._lock = threading.RLock()  # the caller-side state below
        self._vad = (
            StreamingVad(
                replace(
                    config.vad,
                    max_segment_s=config.max_segment_s,
                    # a chat turn is a whole question, not a sentence: its wait does not shrink
                    shrink_s=None if config.mode == "chat" else config.vad.shrink_s,
                ),
                engine.vad_model,
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
        self._items = itertools.count(1)
        self._response_ids = itertools.count(1)
        self._responses: list[_Response] = []  # asked for and not yet done
        self._closed = False  # no more input accepted
        self._muted = False  # no more events, but SessionClosed
        self._finished = threading.Event()
        # Worker-thread state.
        self._mtl = model_is_mtl(self.model)
        self._native = config.speech_output and self.model.has_speech_head
        self.conversation = (
            Conversation(self.model, config.max_context_tokens, config.instructions)
            if config.mode == "chat"
            else None
        )
        self._track: _Track | None = None
        self._unanswered: _UserTurn | None = None

    # -- input (caller's thread) ------------------------------------------------------------

    def feed(self, samples: np.ndarray) -> None:
        """Take 16 kHz mono float32 samples in [-1, 1], any number at a time.

        Raises AudioError for a chunk that is not (N,) floats or holds NaN/inf; the chunk is
        dropped and the session goes on.
        """
        chunk = check_chunk(samples)
        with self._lock:
            self._check_open("feed")
            self.stats.audio_s += chunk.size / SAMPLE_RATE
            if self._vad is None:
                self._buffer_audio(chunk)
            else:
                with _one_torch_thread():
                    found = self._vad.feed(chunk)
                self._on_vad(found)
            self._partial_if_due()

    def commit(self) -> str | None:
        """End the current utterance now; its id, or None (and an Error) if there is none."""
        with self._lock:
            self._check_open("commit")
            item = self._end_utterance()
            if item is None:
                self._emit(ev.Error("empty_commit", f"session {self.id}: no speech to commit"))
            return item

    def clear(self) -> None:
        """Drop the audio of the utterance in progress (it gets no results)."""
        with self._lock:
            self._check_open("clear")
            if self._vad is not None:
                self._offset += self._vad.samples_received
                self._vad.reset()
            self._buffer, self._buffered, self._item = [], 0, None
            self.engine.discard(self, partials_only=True)

    def add_text(self, text: str) -> str:
        """Chat: a typed user turn, answered by the next ``create_response()``; its item id."""
        self._require_chat("add_text")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"session {self.id}: add_text needs a non-empty string")
        with self._lock:
            self._check_open("add_text")
            item = self._new_item()
            turn = _UserTurn(item, text.strip(), None)
            self.engine.submit(self, "control", lambda: self._await_reply(turn))
            return item

    def create_response(self) -> str:
        """Chat: reply to the last user turn not yet answered; returns the response id.

        With no such turn when the reply's turn comes, an Error ``no_input`` is sent instead.
        """
        self._require_chat("create_response")
        with self._lock:
            self._check_open("create_response")
            response = self._new_response()
            asked = time.perf_counter()
            self.engine.submit(self, "response", self._respond_to_pending(response, asked))
            return response.response_id

    def cancel_response(self) -> bool:
        """Chat: stop the reply being generated (and any queued); False if there was none."""
        with self._lock:
            return self._cancel_responses()

    def reset(self) -> None:
        """Chat: forget the conversation (replies in progress are cancelled)."""
        with self._lock:
            self._check_open("reset")
            self._cancel_responses()
            self.engine.submit(self, "control", self._forget)

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

    def close(self, flush: bool = True) -> None:
        """End the session. ``flush``: the utterance in progress still gets its final results
        (no reply); otherwise queued work is dropped. ``SessionClosed`` is the last event."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cancel_responses()
            if flush:
                self._end_utterance()
            else:
                self._muted = True
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

    def _new_response(self) -> _Response:
        response = _Response(f"resp_{self.id}_{next(self._response_ids)}")
        self._responses.append(response)
        return response

    def _cancel_responses(self) -> bool:
        live = [r for r in self._responses if not r.cancelled.is_set()]
        for response in live:
            response.cancelled.set()
            if self.config.speech_output:
                # After set(): no audio delta of this response can follow the cleared event.
                with self._emit_lock:
                    if response.started and not self._muted:
                        self._call(ev.AudioCleared(response.response_id))
        return bool(live)

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
                self._emit(ev.SpeechStarted(self._item, _ms(self._offset + event.sample)))
                if self.config.barge_in:
                    self._cancel_responses()
            elif isinstance(event, SpeechEnded) and self._item is not None:
                item, self._item = self._item, None
                self._emit(ev.SpeechStopped(item, _ms(self._offset + event.end)))
                self._commit_audio(item, event.audio)

    def _end_utterance(self) -> str | None:
        """Close the utterance in progress, if any; its id."""
        if self._vad is not None:
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

    def _commit_audio(self, item: str, audio: np.ndarray) -> None:
        self._emit(ev.Committed(item))
        endpoint = time.perf_counter()
        response = None
        if self.conversation is not None and self.config.auto_response and not self._closed:
            response = self._new_response()
        self.engine.submit(self, "final", self._final(item, audio, endpoint, response))

    def _interval(self) -> int:
        return self.config.partial_interval_ms * SAMPLE_RATE // 1000

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
        self._next_partial = length + self._interval()
        item = self._item
        self.engine.submit(self, "partial", lambda: self._partial(item, audio))

    # -- model work (worker thread) ---------------------------------------------------------

    def _decode(
        self, run: Callable[[str], tuple[str, str | None]]
    ) -> tuple[str | None, str | None]:
        """(transcript, translation) as the mode wants them (None: not wanted), where
        ``run(task)`` gives a ``transcribe`` task's (text, translation)."""
        mode = self.config.mode
        if mode in ("asr", "chat"):
            return run("asr")[0], None
        if mode == "ast":
            return None, run("ast")[1]
        if self._mtl:  # one decode answers "{transcript}\n{translation}"
            return run("mtl")
        return run("asr")[0], run("ast")[1]

    def _final_texts(self, audio: np.ndarray) -> tuple[str | None, str | None]:
        """Exactly what offline ``transcribe()`` gives for the utterance."""

        def run(task: str) -> tuple[str, str | None]:
            result = transcribe(self.model, [audio], task, self.config.final_options)[0]
            return result.text, result.translation

        return self._decode(run)

    def _partial_texts(self, audio: np.ndarray) -> tuple[str | None, str | None]:
        """Greedy decodes token by token with a KV cache: far cheaper than ``generate()``."""
        model = self.model
        embeds, lengths = model.embed([audio])  # (1, Ta, H), once for every prompt

        def run(task: str) -> tuple[str, str | None]:
            prompt = build_prompt(PROMPT_OF_TASK[task])
            inputs, _ = splice(model.llm, model.tokenizer, embeds, lengths, [prompt])  # (1, L, H)
            generation = Generation(model.llm, model.tokenizer, inputs, self.config.partial_options)
            for _ in generation:
                pass
            return read_answer(task, generation.text, self._mtl)

        return self._decode(run)

    def _track_of(self, item: str) -> _Track:
        if self._track is None or self._track.item_id != item:
            self._track = _Track(item)
        return self._track

    def _partial(self, item: str, audio: np.ndarray) -> None:
        if item != self._item:
            return  # cleared, or ended since: its final says more
        transcript, translation = self._partial_texts(audio)
        self.stats.partials += 1
        if item != self._item:
            return
        track = self._track_of(item)
        if transcript is not None:
            shown = track.transcript.shown
            delta = track.transcript.update(transcript)
            if delta or track.transcript.shown != shown:
                stable = track.transcript.stable
                self._emit(ev.TranscriptDelta(item, delta, stable, track.transcript.shown))
        if translation is not None:
            delta = track.translation.update(translation)
            if delta:
                self._emit(ev.TranslationDelta(item, delta))

    def _final(
        self, item: str, audio: np.ndarray, endpoint: float, response: _Response | None
    ) -> Iterator[None]:
        track = self._track_of(item)
        try:
            if self.conversation is None:
                transcript, translation = self._final_texts(audio)
                question = None
            else:
                embeds, lengths = self.model.embed([audio])  # (1, Ta, H), (1,)
                ids = generate_ids(
                    self.model.llm,
                    self.model.tokenizer,
                    embeds,
                    lengths,
                    [build_prompt("asr")],
                    self.config.final_options,
                )
                transcript = self.model.tokenizer.decode(ids[0], skip_special_tokens=True).strip()
                translation = None
                question = _UserTurn(item, transcript, embeds[0, : int(lengths[0])])
            if transcript is not None:
                delta = track.transcript.finish(transcript)
                if delta:
                    stable = track.transcript.stable  # what the deltas add up to
                    self._emit(ev.TranscriptDelta(item, delta, stable, transcript))
                self._emit(ev.Transcript(item, transcript, language_of(transcript) if transcript else None))
            if translation is not None:
                delta = track.translation.finish(translation)
                if delta:
                    self._emit(ev.TranslationDelta(item, delta))
                self._emit(ev.Translation(item, translation))
            self.stats.finals += 1
            self.stats.final_latency_s.append(time.perf_counter() - endpoint)
            if translation and self.config.speech_output:
                yield from self._speak_translation(item, translation, audio)
            if question is not None:
                if response is None:
                    self._await_reply(question)
                else:
                    yield from self._respond(response, question, endpoint)
        finally:
            if response is not None:
                self._retire(response)  # never started (a failure above): nothing was sent

    def _respond_to_pending(self, response: _Response, asked: float) -> Iterator[None]:
        question, self._unanswered = self._unanswered, None
        if question is None:
            self._retire(response)
            self._emit(ev.Error("no_input", f"session {self.id}: no user turn to answer"))
            return
        yield from self._respond(response, question, asked)

    def _respond(self, response: _Response, question: _UserTurn, since: float) -> Iterator[None]:
        """Generate the reply one token per step; stop when cancelled."""
        assert self.conversation is not None
        with self._emit_lock:
            response.started = True  # from now on a cancel clears its audio
            if not self._muted:
                self._call(ev.ResponseStarted(response.response_id, question.item_id))
        self.stats.responses += 1
        reply: Reply | None = None
        status: ev.ResponseStatus = "cancelled"
        try:
            if response.cancelled.is_set():  # before it began: the question still counts
                self.conversation.append(question.question, "", interrupted=True)
            elif question.audio_embeds is None:
                reply = self.conversation.reply_text(question.question, self.config.chat_options)
            elif self._native:
                reply = spoken_reply(
                    self.conversation,
                    question.audio_embeds,
                    question=question.question,
                    options=self.config.chat_options,
                    audio_options=self.config.speech_options,
                    should_stop=response.cancelled.is_set,
                )
            else:
                reply = self.conversation.reply(
                    question.audio_embeds,
                    question=question.question,
                    options=self.config.chat_options,
                )
            if reply is not None:
                for text, audio in self._reply_pieces(response, reply):
                    if text:
                        if reply.text == text:  # the reply's first text
                            self.stats.reply_latency_s.append(time.perf_counter() - since)
                        self._emit(ev.ResponseTextDelta(response.response_id, text))
                    if audio.size:
                        self._emit_audio(response, audio)
                    yield  # other sessions' work may run here
                reply.stop()
                assert reply.turn is not None
                status = "cancelled" if reply.turn.interrupted else "completed"
                if status == "completed" and self.config.speech_output:
                    self._emit(ev.ResponseAudioDone(response.response_id))
        except Exception as exc:  # the Error says why; the session goes on
            status = "failed"
            self.report_error(exc)
        finally:
            if reply is not None:
                reply.stop()  # remember what was said, even on failure
            self._retire(response)
            if status == "cancelled":
                self.stats.responses_cancelled += 1
            text = reply.text if reply is not None else ""
            self._emit(ev.ResponseDone(response.response_id, text, status))

    def _reply_pieces(self, response: _Response, reply: Reply) -> Iterator[tuple[str, np.ndarray]]:
        """(text delta, PCM16 audio) per step of the reply, until it ends or is cancelled.

        The speech head gives its audio as the latents come (a step per token); the TTS backend
        synthesises each finished sentence in the step that finishes it (espeak-ng:
        milliseconds), so a long reply never holds the worker for longer than one sentence.
        """
        if not self.config.speech_output:
            while not response.cancelled.is_set():
                step = next(reply, None)
                if step is None:
                    return
                yield step[1], _NO_AUDIO
            return
        rate = self.config.output_sample_rate
        if isinstance(reply, SpeechReply):
            spoke = False
            for chunk in speak_natively(reply, self.model, sample_rate=rate):
                spoke = spoke or bool(chunk.audio.size)
                yield chunk.text, float_to_pcm16(chunk.audio)
            if not spoke and not reply.interrupted:  # the head said nothing: the backend does
                for pcm in self._tts_sentences(reply.text, None, response.cancelled.is_set):
                    yield "", pcm
            return
        stream = speak_reply(
            reply,
            self.engine.tts_backend(self.config.tts_backend),
            voice=self.config.voice,
            sample_rate=rate,
            should_stop=response.cancelled.is_set,
        )
        for chunk in stream:
            yield chunk.text, float_to_pcm16(chunk.audio)

    def _emit_audio(self, response: _Response, pcm: np.ndarray) -> None:
        """A reply's speech (PCM16); dropped once the response is cancelled (its AudioCleared
        is sent under the same lock, after the cancel: no delta can follow it)."""
        data = _pcm_bytes(pcm)
        rate = self.config.output_sample_rate
        with self._emit_lock:
            if not self._muted and not response.cancelled.is_set():
                self._call(ev.ResponseAudioDelta(response.response_id, data, rate))

    def _speak_translation(self, item: str, text: str, audio: np.ndarray) -> Iterator[None]:
        """A final translation spoken between other sessions' work: by the speech head (the
        ``s2s_trans`` answer to the utterance's ``audio``, a step per token), or by the TTS
        backend a sentence per step (also when the head said nothing)."""
        rate = self.config.output_sample_rate
        if self._native:
            spoke = False
            for pcm in self._translation_speech(audio):
                if pcm.size:
                    spoke = True
                    self._emit(ev.TranslationAudioDelta(item, _pcm_bytes(pcm), rate))
                yield
            if spoke:
                return
        for pcm in self._tts_sentences(text, "en", lambda: False):
            self._emit(ev.TranslationAudioDelta(item, _pcm_bytes(pcm), rate))
            yield

    def _translation_speech(self, audio: np.ndarray) -> Iterator[np.ndarray]:
        """PCM16 per token of the head's ``s2s_trans`` answer (often empty)."""
        model = self.model
        embeds, lengths = model.embed([audio])  # (1, Ta, H), (1,)
        prompt = build_prompt("s2s_trans")
        inputs, _ = splice(model.llm, model.tokenizer, embeds, lengths, [prompt])  # (1, L, H)
        generation = SpeechGeneration(
            model.llm,
            model.tokenizer,
            inputs,
            replace(self.config.final_options, num_beams=1),
            audio_options=self.config.speech_options,
        )
        for chunk in speak_natively(generation, model, sample_rate=self.config.output_sample_rate):
            yield float_to_pcm16(chunk.audio)

    def _tts_sentences(
        self, text: str, language: str | None, cancelled: Callable[[], bool]
    ) -> Iterator[np.ndarray]:
        """``text`` spoken by the TTS backend: PCM16 of each sentence, until ``cancelled``;
        ``language`` None: Mandarin for a sentence with Chinese in it, else English."""
        backend = self.engine.tts_backend(self.config.tts_backend)
        rate = self.config.output_sample_rate
        for sentence in split_sentences(text):
            if cancelled():
                return
            spoken = language or language_of(sentence)
            pcm, _ = text_to_speech(sentence, spoken, self.config.voice, backend, rate)
            if pcm.size:
                yield pcm

    def _retire(self, response: _Response) -> None:
        with self._lock:
            if response in self._responses:
                self._responses.remove(response)

    def _await_reply(self, question: _UserTurn) -> None:
        self._unanswered = question

    def _forget(self) -> None:
        assert self.conversation is not None
        self.conversation.reset()
        self._unanswered = None

    def _finish(self) -> None:
        with self._emit_lock:
            self._call(ev.SessionClosed(self.id))
            self._muted = True
        self._finished.set()
        self.engine.forget(self)

    # -- events -----------------------------------------------------------------------------

    def report_error(self, exc: BaseException) -> None:
        """A failure of model work (the engine reports its jobs' here): an Error event; the
        session goes on."""
        self.stats.errors += 1
        log.warning("session %s: %s", self.id, exc, exc_info=exc)
        self._emit(ev.Error("model_error", f"{type(exc).__name__}: {exc}"))

    def _emit(self, event: ev.Event) -> None:
        with self._emit_lock:
            if not self._muted:
                self._call(event)

    def _call(self, event: ev.Event) -> None:
        try:
            self._on_event(event)
        except Exception:  # the owner's bug must not stop the engine or the session
            log.exception("session %s: on_event failed on %r", self.id, event)


def model_is_mtl(model) -> bool:
    """Whether the model answers the ast prompt with ``"{transcript}\\n{translation}"``."""
    paths = getattr(model, "paths", None)
    return paths is not None and paths.variant == "asr_ast_mtl"
