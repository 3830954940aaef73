"""The model work of one live session, run on the engine's worker thread as the session's jobs.

- partial: decode the growing utterance greedily, token by token; its stable prefix goes out. Its
  audio is encoded in a bounded window (``SessionConfig.partial_context``, see
  ``mooer.asr.partial_context``), or whole where that is None, in the engine's encoder batch
  as finals are;
- final: decode the whole utterance with the offline settings (the ``mooer.tasks`` recipe, as
  ``transcribe()`` decodes a segment), and in chat mode go on to the reply, generated one token
  per step so that the worker can serve other sessions between tokens and a barge-in stops it
  before the next token.

Spoken output (``speech_output``) takes one of two ways, by the model: one with the MooER speech
head (omni, S2ST) speaks by itself, its latents vocoded as they are generated (``s2s_chat`` on
the conversation's cache for replies, ``s2s_trans`` for translations); any other model's text is
spoken sentence by sentence by the TTS backend.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mooer.agent import events as ev
from mooer.agent.stable_text import TRANSLATION_AGREE, StableText
from mooer.asr.partial_context import PartialContext, PartialEmbeds
from mooer.asr.segmenter import split_long
from mooer.audio import SAMPLE_RATE
from mooer.llm.backend import Waiting
from mooer.llm.conversation import Conversation, Message, Reply, StreamedReply
from mooer.llm.decoding import DecodingOptions, splice
from mooer.llm.prompts import build_prompt
from mooer.llm.speech import SpeechGeneration, SpeechReply, spoken_reply
from mooer.speak import speak_natively, speak_reply, text_to_speech
from mooer.tasks import Texts, decode_waiting
from mooer.text import language_of
from mooer.tts.backend import float_to_pcm16, split_sentences
from mooer.tts.speaker_encoder import MIN_PROMPT_SECONDS

if TYPE_CHECKING:
    from mooer.agent.session import Session, SessionConfig

_NO_AUDIO = np.zeros(0, dtype=np.int16)


def _pcm_bytes(pcm: np.ndarray) -> bytes:
    """(N,) int16 -> little-endian PCM16 bytes, as every wire format here carries them."""
    return pcm.astype("<i2").tobytes()


@dataclass
class _Track:
    """The partial state of the utterance being decoded."""

    item_id: str
    context: PartialContext | None  # None: each partial encodes the whole utterance so far
    transcript: StableText = field(default_factory=StableText)
    translation: StableText = field(default_factory=lambda: StableText(TRANSLATION_AGREE))
    embeds: PartialEmbeds | None = None

    def __post_init__(self) -> None:
        if self.context is not None:
            self.embeds = PartialEmbeds(self.context)


@dataclass(eq=False)
class _Early:
    """A final decoded in a pause that may end its utterance, from that pause's first sample;
    ``since``: the English already sent that its translation goes on from."""

    item_id: str
    pause: int
    audio: np.ndarray  # (N,) 16 kHz, as the pause would end the utterance (PauseBegan.audio)
    texts: Texts
    audio_embeds: torch.Tensor  # (Ta, H)
    since: str


@dataclass(eq=False)
class PendingResponse:
    """A chat reply that was asked for; ``cancelled`` is set from any thread.

    ``item_id`` names the assistant message it makes; ``speak``: its text is also spoken;
    ``instructions``: its own (read just before it, not remembered); ``remember`` False: an
    out-of-band reply, not remembered; ``context``: the messages it answers instead of the
    conversation.
    """

    response_id: str
    item_id: str
    speak: bool = False
    instructions: str = ""
    remember: bool = True
    context: tuple[Message, ...] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: bool = False  # ResponseStarted was sent (under the outbox's lock)


@dataclass(eq=False)
class UserTurn:
    """A spoken user turn waiting for its reply (typed ones are remembered at once)."""

    item_id: str
    question: str
    audio_embeds: torch.Tensor  # (Ta, H)


class Responses:
    """The replies of a session asked for and not yet done: made and cancelled on the caller's
    thread, retired on the worker's."""

    def __init__(self, session_id: str, outbox: ev.Outbox) -> None:
        self.session_id = session_id
        self.outbox = outbox
        self._ids = itertools.count(1)
        self._live: list[PendingResponse] = []
        self._lock = threading.Lock()

    def new(self, item_id: str, speak: bool, **fields: Any) -> PendingResponse:
        """A new reply making the assistant message ``item_id``; ``fields``: the rest of its
        ``PendingResponse``."""
        with self._lock:
            response_id = f"resp_{self.session_id}_{next(self._ids)}"
            response = PendingResponse(response_id, item_id, speak, **fields)
            self._live.append(response)
            return response

    def cancel_all(self) -> bool:
        """Cancel every live reply (a speaking one's audio is cleared); False if none was live."""
        with self._lock:
            live = [r for r in self._live if not r.cancelled.is_set()]
        for response in live:
            response.cancelled.set()
            if response.speak:
                # After set(): no audio delta of this response can follow the cleared event.
                with self.outbox.lock:
                    if response.started:
                        self.outbox.deliver(ev.AudioCleared(response.response_id))
        return bool(live)

    def retire(self, response: PendingResponse) -> None:
        with self._lock:
            if response in self._live:
                self._live.remove(response)


class SessionWork:
    """A session's model work and the state only it touches (the conversation, the partial
    track, the turn awaiting its reply). Every method runs on the engine's worker thread."""

    def __init__(self, session: Session, responses: Responses) -> None:
        self.session = session
        self.model = session.model
        self.engine = session.engine
        self.stats = session.stats
        self.outbox = session.outbox
        self.responses = responses
        config = session.config
        self.native = config.speech_output and self.model.has_speech_head  # translations
        self.conversation = (
            Conversation(self.model, config.max_context_tokens, config.instructions)
            if config.mode == "chat"
            else None
        )
        self._track: _Track | None = None
        self._unanswered: UserTurn | None = None
        self._voice: np.ndarray | None = None  # the last speaker turn's speech (translations)
        self._early: _Early | None = None  # the last early final decoded

    @property
    def config(self) -> SessionConfig:
        """The session's config now (``set_instructions`` replaces it)."""
        return self.session.config

    def texts(
        self,
        audio: np.ndarray,
        options: DecodingOptions,
        step_by_step: bool = False,
        should_stop: Callable[[], bool] | None = None,
        translation_from: str = "",
    ) -> Waiting[tuple[Texts, torch.Tensor]]:
        """The utterance's texts as the mode wants them, and its audio embeddings (Ta, H).

        The audio is encoded once for every prompt the mode runs (in the engine's next batched
        forward); a manual turn longer than the model's segments is decoded in pieces, as
        ``transcribe()`` would; the session's hotwords are favoured. It yields what the encoder
        batch and the LLM backend are still working on (the engine serves others meanwhile).
        ``should_stop`` and ``translation_from`` (the English already sent; a single piece
        only): see ``decode_waiting``.
        """
        pieces = [audio[a:b] for a, b in split_long(audio)]
        embeds, lengths = yield from self.engine.embed(pieces)  # (P, Ta, H), (P,), batched
        since = translation_from if len(pieces) == 1 else ""
        texts = yield from self._decode(embeds, lengths, options, step_by_step, should_stop, since)
        audio_embeds = torch.cat([embeds[p, : int(n)] for p, n in enumerate(lengths)])  # (Ta, H)
        return texts, audio_embeds

    def _decode(
        self,
        embeds: torch.Tensor,
        lengths: torch.Tensor,
        options: DecodingOptions,
        step: bool,
        should_stop: Callable[[], bool] | None = None,
        translation_from: str = "",
    ) -> Waiting[Texts]:
        """The mode's texts of pieces of one utterance, ``embeds`` (P, Ta, H), as one; the
        session's hotwords favoured."""
        if self.config.hotwords is not None:
            options = replace(options, hotwords=self.config.hotwords)
        texts = yield from decode_waiting(
            self.model,
            embeds,
            lengths,
            self.config.task,
            options,
            step,
            should_stop,
            translation_from,
            self.engine.llm_backend,
        )
        return Texts.join(texts)

    def _track_of(self, item: str) -> _Track:
        if self._track is None or self._track.item_id != item:
            self._track = _Track(item, self.config.partial_context)
        return self._track

    def partial(self, item: str, audio: np.ndarray) -> Waiting[None]:
        if item != self.session.open_item:
            return  # cleared, or ended since: its final says more
        track = self._track_of(item)
        options = self.config.partial_options

        def ended() -> bool:  # the utterance's final waits behind this partial
            return item != self.session.open_item

        if track.embeds is None:
            texts, _ = yield from self.texts(audio, options, True, ended)
            self.stats.partial_audio_s += audio.size / SAMPLE_RATE
        else:
            window = track.embeds.window(audio)
            batch, lengths = yield from self.engine.embed([window])  # (1, Tw, H), (1,), batched
            embeds = track.embeds.join(audio.size, batch[0], int(lengths[0]))  # (Ta, H)
            self.stats.partial_audio_s += window.size / SAMPLE_RATE
            texts = yield from self._decode(
                embeds[None], torch.tensor([len(embeds)]), options, True, ended
            )
        transcript, translation = texts.transcript, texts.translation
        self.stats.partials += 1
        if item != self.session.open_item:
            return
        said = transcript if transcript is not None else translation
        if self.conversation is None and len(split_sentences(said or "")) > 1:
            # a sentence ended inside the utterance (a model that punctuates): cut it there
            self.session.sentence_end_seen(item)
            if item != self.session.open_item:
                return  # cut: its final comes, and the words after the cut are the next one's
        if transcript is not None:
            shown = track.transcript.shown
            delta = track.transcript.update(transcript)
            if delta or track.transcript.shown != shown:
                stable = track.transcript.stable
                self.outbox.emit(ev.TranscriptDelta(item, delta, stable, track.transcript.shown))
        if translation is not None:
            delta = track.translation.update(translation)
            if delta:
                self.outbox.emit(ev.TranslationDelta(item, delta))

    def early_final(self, item: str, audio: np.ndarray, pause: int) -> Waiting[None]:
        """The final of the open utterance ``item`` decoded from ``audio``, the utterance as the
        pause from sample ``pause`` would end it (``SessionConfig.early_finals``), for
        ``final`` to take if that pause does; nothing, and stopped at its next step, once
        speech came back."""

        def resumed() -> bool:
            return self.session.speech_resumed(item, pause)

        if resumed():
            return
        since = self._track_of(item).translation.stable
        texts, audio_embeds = yield from self.texts(
            audio, self.config.final_options, should_stop=resumed, translation_from=since
        )
        if not resumed():
            self._early = _Early(item, pause, audio, texts, audio_embeds, since)

    def final(
        self,
        item: str,
        audio: np.ndarray,
        endpoint: float,
        response: PendingResponse | None,
        waited: float = 0.0,
        early: int | None = None,
    ) -> Iterator[None]:
        """The utterance's final results (and its chat reply); ``endpoint``: when it ended
        (``time.perf_counter``), after ``waited`` seconds of the pause from sample ``early``
        where an early final was begun in it."""
        track = self._track_of(item)
        try:
            began = time.perf_counter()
            kept, self._early = self._early, None
            stable = track.translation.stable
            if kept is not None and (kept.item_id, kept.pause, kept.since) == (item, early, stable):
                texts, audio_embeds, audio = kept.texts, kept.audio_embeds, kept.audio
                self.stats.early_finals_kept += 1
            else:
                kept = None
                # The final goes on from the English already sent: a delta is never taken back.
                texts, audio_embeds = yield from self.texts(
                    audio, self.config.final_options, translation_from=stable
                )
            decoded = time.perf_counter() - began
            timing = ev.FinalTiming(waited, began - endpoint, decoded, kept is not None)
            transcript, translation = texts.transcript, texts.translation
            speaker = None
            if self.session.speakers is not None:
                yield  # others' work may run between the decode and the voice print
                speaker = self._speaker(audio)
            question = None
            if self.conversation is not None:
                question = UserTurn(item, transcript or "", audio_embeds)
            if transcript is not None:
                delta = track.transcript.finish(transcript)
                if delta:
                    stable = track.transcript.stable  # what the deltas add up to
                    self.outbox.emit(ev.TranscriptDelta(item, delta, stable, transcript))
                language = language_of(transcript) if transcript else None
                self.outbox.emit(ev.Transcript(item, transcript, language, speaker, timing))
            if translation is not None:
                delta = track.translation.finish(translation)
                if delta:
                    self.outbox.emit(ev.TranslationDelta(item, delta))
                self.outbox.emit(ev.Translation(item, translation, speaker, timing))
            self.stats.finals += 1
            self.stats.final_latency_s.append(time.perf_counter() - endpoint)
            if translation and self.config.speech_output:
                yield from self._speak_translation(item, translation, audio, audio_embeds)
            if question is not None:
                if response is None:
                    self.await_reply(question)
                else:
                    self._settle()
                    yield from self._respond(response, question, endpoint)
        finally:
            if response is not None:
                self.responses.retire(response)  # never started (a failure above): nothing was sent

    def _speaker(self, audio: np.ndarray) -> int | None:
        """Who spoke the utterance's 16 kHz samples (N,); None (and an Error event) if the voice
        print failed: the final goes out without it."""
        try:
            return self.session.speakers.label(audio)
        except Exception as exc:
            self.session.report_error(exc)
            return None

    def respond_to_pending(self, response: PendingResponse, asked: float) -> Iterator[None]:
        """Answer the spoken turn waiting for its reply, if any, else the conversation as
        remembered (the assistant may speak first). An out-of-band reply answers the memory,
        the waiting turn's transcript put there first."""
        question = None
        if response.remember and response.context is None:
            question, self._unanswered = self._unanswered, None
        else:
            self._settle()
        yield from self._respond(response, question, asked)

    def _respond(
        self, response: PendingResponse, question: UserTurn | None, since: float
    ) -> Iterator[None]:
        """Generate the reply one token per step; stop when cancelled."""
        conversation = self.conversation
        assert conversation is not None
        with self.outbox.lock:
            response.started = True  # from now on a cancel clears its audio
            asked = question.item_id if question is not None else None
            self.outbox.deliver(ev.ResponseStarted(response.response_id, asked, response.item_id))
        self.stats.responses += 1
        reply: Reply | StreamedReply | None = None
        status: ev.ResponseStatus = "cancelled"
        options = self.config.chat_options
        names = {"answer_id": response.item_id, "instructions": response.instructions}
        try:
            if response.cancelled.is_set():  # before it began: the question still counts
                if question is not None:
                    conversation.add(Message("user", question.question, question.item_id))
                if response.remember:
                    conversation.add(Message("assistant", "", response.item_id, True))
            elif response.context is not None:
                reply = self._answer_context(response, options)
            elif question is None:
                reply = conversation.respond(options, remember=response.remember, **names)
            elif response.speak and self.model.has_speech_head:
                reply = spoken_reply(
                    conversation,
                    question.audio_embeds,
                    question=question.question,
                    options=options,
                    audio_options=self.config.speech_options,
                    should_stop=response.cancelled.is_set,
                    question_id=question.item_id,
                    **names,
                )
            else:
                reply = conversation.reply(
                    question.audio_embeds,
                    question=question.question,
                    options=options,
                    question_id=question.item_id,
                    **names,
                )
            if reply is not None:
                pieces = self._reply_pieces(response, reply)
                while True:
                    # A streaming backend's next token (the whole answer, to be spoken a
                    # sentence at a time): others run meanwhile.
                    waits = reply.pending(whole=response.speak)
                    if waits is not None:
                        yield waits
                    piece = next(pieces, None)
                    if piece is None:
                        break
                    text, audio = piece
                    if text:
                        if reply.text == text:  # the reply's first text
                            self.stats.reply_latency_s.append(time.perf_counter() - since)
                        self.outbox.emit(ev.ResponseTextDelta(response.response_id, text))
                    if audio.size:
                        self._emit_audio(response, audio)
                    yield  # other sessions' work may run here
                reply.stop()
                assert reply.turn is not None
                status = "cancelled" if reply.turn.interrupted else "completed"
                if response.context is not None and response.remember:
                    conversation.add(
                        Message("assistant", reply.text, response.item_id, reply.turn.interrupted)
                    )
                if status == "completed" and response.speak:
                    self.outbox.emit(ev.ResponseAudioDone(response.response_id))
        except Exception as exc:  # the Error says why; the session goes on
            status = "failed"
            self.session.report_error(exc)
        finally:
            if reply is not None:
                reply.stop()  # remember what was said, even on failure
            self.responses.retire(response)
            if status == "cancelled":
                self.stats.responses_cancelled += 1
            done = ev.ResponseDone(response.response_id, "", status)
            if reply is not None:
                done = ev.ResponseDone(
                    response.response_id,
                    reply.text,
                    status,
                    reply.input_tokens,
                    reply.cached_tokens,
                    len(reply.ids),
                )
            self.outbox.emit(done)

    def _answer_context(self, response: PendingResponse, options: DecodingOptions) -> Reply:
        """A reply to ``response.context`` alone, in a conversation of its own (its cache too)."""
        assert response.context is not None
        config = self.config
        own = Conversation(self.model, config.max_context_tokens, config.instructions)
        for message in response.context:
            own.add(message)
        return own.respond(options, instructions=response.instructions)

    def _reply_pieces(
        self, response: PendingResponse, reply: Reply
    ) -> Iterator[tuple[str, np.ndarray]]:
        """(text delta, PCM16 audio) per step of the reply, until it ends or is cancelled.

        The speech head gives its audio as the latents come (a step per token); the TTS backend
        synthesises each finished sentence in the step that finishes it (espeak-ng:
        milliseconds), so a long reply never holds the worker for longer than one sentence.
        """
        if not response.speak:
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

    def _emit_audio(self, response: PendingResponse, pcm: np.ndarray) -> None:
        """A reply's speech (PCM16); dropped once the response is cancelled (its AudioCleared
        is sent under the same lock, after the cancel: no delta can follow it)."""
        data = _pcm_bytes(pcm)
        rate = self.config.output_sample_rate
        with self.outbox.lock:
            if not response.cancelled.is_set():
                self.outbox.deliver(ev.ResponseAudioDelta(response.response_id, data, rate))

    def _speak_translation(
        self, item: str, text: str, audio: np.ndarray, audio_embeds: torch.Tensor
    ) -> Iterator[None]:
        """A final translation spoken between other sessions' work: by the speech head (the
        ``s2s_trans`` answer to the utterance's ``audio``, a step per token, in the voice of
        whoever said it), or by the TTS backend in the session's fixed voice, a sentence per
        step (also when the head said nothing)."""
        rate = self.config.output_sample_rate
        if self.native:
            spoke = False
            for pcm in self._translation_speech(audio, audio_embeds):
                if pcm.size:
                    spoke = True
                    self.outbox.emit(ev.TranslationAudioDelta(item, _pcm_bytes(pcm), rate))
                yield
            if spoke:
                return
        for pcm in self._tts_sentences(text, "en", lambda: False):
            self.outbox.emit(ev.TranslationAudioDelta(item, _pcm_bytes(pcm), rate))
            yield

    def _translation_speech(
        self, audio: np.ndarray, audio_embeds: torch.Tensor
    ) -> Iterator[np.ndarray]:
        """PCM16 per token of the head's ``s2s_trans`` answer to the utterance's audio
        embeddings (Ta, H), encoded once for its final (often empty). Each utterance is a
        speaker turn: its own speech gives the voice (a short one keeps the last turn's)."""
        model = self.model
        embeds = audio_embeds[None]  # (1, Ta, H)
        lengths = torch.tensor([len(audio_embeds)], device=embeds.device)  # (1,)
        prompt = build_prompt("s2s_trans")
        inputs, _ = splice(model.llm, model.tokenizer, embeds, lengths, [prompt])  # (1, L, H)
        generation = SpeechGeneration(
            model.llm,
            model.tokenizer,
            inputs,
            replace(self.config.final_options, num_beams=1),
            audio_options=self.config.speech_options,
        )
        if audio.size >= MIN_PROMPT_SECONDS * SAMPLE_RATE:
            self._voice = audio
        rate = self.config.output_sample_rate
        for chunk in speak_natively(generation, model, sample_rate=rate, source=self._voice):
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

    def await_reply(self, question: UserTurn) -> None:
        self._settle()
        self._unanswered = question

    def _settle(self) -> None:
        """A spoken turn still waiting for its reply enters the memory as its transcript (what
        comes after it in the conversation must follow it)."""
        if self._unanswered is not None and self.conversation is not None:
            turn, self._unanswered = self._unanswered, None
            self.conversation.add(Message("user", turn.question, turn.item_id))

    def add_message(self, message: Message, after: str | None, first: bool) -> None:
        """Remember a typed message: last, first, or after the message named ``after`` (first
        when the memory no longer holds it)."""
        assert self.conversation is not None
        self._settle()
        index = 0 if first else None
        if after is not None:
            found = self.conversation.index_of(after)
            index = 0 if found is None else found + 1
        self.conversation.add(message, index)

    def delete(self, item_id: str) -> None:
        """Forget the message (or the waiting spoken turn) ``item_id``."""
        assert self.conversation is not None
        if self._unanswered is not None and self._unanswered.item_id == item_id:
            self._unanswered = None
        self.conversation.remove(item_id)

    def forget(self) -> None:
        assert self.conversation is not None
        self.conversation.reset()
        self._unanswered = None
