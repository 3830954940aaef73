"""Speech out: speech-to-speech translation (S2ST), spoken answers, and text-to-speech.

Two ways to speak, chosen by the checkpoint:

==============  ===========================================  ==================================
model           s2s_trans                                    s2s_chat
==============  ===========================================  ==================================
speech head     released ``s2s_trans`` prompt; text, then    released ``s2s_chat`` prompt, the
(omni, S2ST)    ``<|audio_start|>``: latents -> HiFi-GAN     same way
no head (MTL,   ``ast`` prompt -> English text -> TTS        the chat layout of
demo model)     backend (espeak-ng default)                  ``mooer.llm.conversation`` -> TTS
==============  ===========================================  ==================================

Both stream: text deltas as the LLM writes them, audio as soon as it is final (HiFi-GAN: every
few latent frames; TTS: every finished sentence). The text is always returned beside the audio.
Audio is float32 mono in [-1, 1], at the source's rate (22050 Hz for both) unless another rate is
asked for; the conversion is streamed, so chunks join without seams.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from mooer.asr.segmenter import split_long
from mooer.audio import SAMPLE_RATE, load_audio, to_mono_16k
from mooer.errors import AudioError, ConfigError, check_number
from mooer.llm.conversation import CHAT, Conversation
from mooer.llm.decoding import SPEECH, STREAMING, DecodingOptions, splice
from mooer.llm.generation import Generation, require_single_beam
from mooer.llm.prompts import build_prompt
from mooer.llm.speech import SpeechGeneration
from mooer.model import SpeechLLM
from mooer.text import has_chinese, language_of
from mooer.tts.backend import (
    EspeakBackend,
    TTSBackend,
    float_to_pcm16,
    load_backend,
    resample_pcm16,
    split_sentences,
)
from mooer.tts.vocoder import StreamingVocoder

TASKS = ("s2s_trans", "s2s_chat")
TRANSLATION = STREAMING  # greedy text for the cascade's translation (token by token)


def _silence() -> np.ndarray:
    return np.zeros(0, dtype=np.float32)


@dataclass(frozen=True)
class SpeechChunk:
    """A piece of a spoken answer: new text, new audio, or both."""

    text: str = ""  # append to the text so far
    audio: np.ndarray = field(default_factory=_silence)  # (N,) float32 in [-1, 1]
    sample_rate: int = 22050


@dataclass
class SpeechResult:
    """A whole spoken answer."""

    text: str
    audio: np.ndarray  # (N,) float32 in [-1, 1]
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate

    def pcm16(self) -> np.ndarray:
        return float_to_pcm16(self.audio)

    def save(self, path: str | os.PathLike) -> None:
        """Write 16-bit PCM: a wav, or any format soundfile knows from the suffix."""
        _write_pcm16(path, self.pcm16(), self.sample_rate)


class SpeechStream:
    """A spoken answer as it is made. Iterate it for ``SpeechChunk`` s; ``sample_rate`` is known
    before the first chunk, ``text`` grows as they pass. ``close()`` abandons it."""

    def __init__(self, chunks: Generator[SpeechChunk, None, None], sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.text = ""
        self._chunks = chunks

    def __iter__(self) -> SpeechStream:
        return self

    def __next__(self) -> SpeechChunk:
        chunk = next(self._chunks)
        self.text += chunk.text
        return chunk

    def close(self) -> None:
        self._chunks.close()

    def collect(self) -> SpeechResult:
        """Run to the end; the whole answer."""
        audio = [chunk.audio for chunk in self]
        whole = np.concatenate(audio) if audio else _silence()
        return SpeechResult(self.text, whole, self.sample_rate)


class _Resampler:
    """Streaming rate conversion: chunks converted one by one equal the whole converted at once."""

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self._stream = None
        if from_rate != to_rate:
            self._stream = soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32")

    def push(self, audio: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None or (audio.size == 0 and not last):
            return audio
        return self._stream.resample_chunk(np.ascontiguousarray(audio, np.float32), last=last)


class _Deltas:
    """A growing text -> what each version adds; a text that was rewritten adds nothing."""

    def __init__(self) -> None:
        self.text = ""

    def push(self, text: str) -> str:
        if not text.startswith(self.text):
            return ""
        delta, self.text = text[len(self.text) :], text
        return delta


class _Translation:
    """The English part of a growing ``ast`` answer, append-only.

    MTL models answer ``"{transcript}\\n{translation}"`` (the demo model gives either form), so a
    first line that is surely a transcript (an MTL variant's, or Mandarin text) is held back and
    skipped when its newline comes; otherwise the answer is the translation from its first word.
    """

    def __init__(self, mtl: bool) -> None:
        self.mtl = mtl
        self.whole: bool | None = None  # decided: whole answer (True) or after the newline

    def of(self, answer: str, done: bool) -> str:
        head, newline, rest = answer.partition("\n")
        if self.whole is None:
            if newline and (self.mtl or has_chinese(head)):
                self.whole = False
            elif head and not self.mtl and not has_chinese(head):
                self.whole = True
            elif done:
                # no newline: an MTL answer has no translation (as transcribe reads it)
                return "" if self.mtl else answer
            else:
                return ""
        return answer if self.whole else rest.strip()


class _SentenceSpeaker:
    """Speaks a growing text with a TTS backend, each sentence once the next one has begun."""

    def __init__(self, backend: TTSBackend, language: str | None, voice: str | None) -> None:
        self.backend = backend
        self.language = language  # None: per sentence, Mandarin if it holds CJK
        self.voice = voice
        self.spoken = 0  # sentences synthesised

    def feed(self, text: str, done: bool) -> Iterator[np.ndarray]:
        """float32 audio at the backend's rate of the sentences finished since the last call."""
        sentences = split_sentences(text)
        ready = sentences if done else sentences[:-1]
        for sentence in ready[self.spoken :]:
            self.spoken += 1
            language = self.language or language_of(sentence)
            for pcm in self.backend.stream(sentence, language, self.voice):
                yield pcm.astype(np.float32) / 32768.0


def _write_pcm16(path: str | os.PathLike, pcm: np.ndarray, sample_rate: int) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        sf.write(os.fspath(path), pcm, sample_rate, subtype="PCM_16")
    except (sf.SoundFileError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot write audio to {os.fspath(path)}: {exc}") from exc


def _as_samples(samples: np.ndarray | str | os.PathLike) -> np.ndarray:
    if isinstance(samples, (str, os.PathLike)):
        return load_audio(samples)
    return to_mono_16k(samples, SAMPLE_RATE)


def _resolve_backend(backend: TTSBackend | str | None) -> TTSBackend:
    if backend is None:
        return EspeakBackend()
    if isinstance(backend, str):
        return load_backend(backend)
    return backend


def _check_rate(sample_rate: int | None) -> None:
    if sample_rate is not None:
        check_number(sample_rate, "output sample_rate (Hz)", low=8000, integer=True)


def speech_to_speech(
    model: SpeechLLM,
    samples: np.ndarray | str | os.PathLike,
    task: str = "s2s_trans",
    options: DecodingOptions | None = None,
    voice: str | os.PathLike | None = None,
    backend: TTSBackend | str | None = None,
    sample_rate: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SpeechStream:
    """Translate speech into English speech (``s2s_trans``) or answer it aloud (``s2s_chat``).

    ``samples``: 16 kHz mono float32 (N,), or an audio file. ``options`` default to ``SPEECH``
    (sampling, top_p 0.85) with a speech head, else greedy text (``TRANSLATION`` / ``CHAT``);
    beams are not possible token by token. ``voice``: with a speech head a recording whose voice
    is used (default: a translation speaks in the voice of its source speech, taken from each
    piece by the head's speaker encoder; an answer in the checkpoint's ``prompt.wav`` voice),
    else a voice of the backend (espeak-ng: ``m1``..``m8``, ``f1``..``f5``; the same voice
    whoever spoke). ``backend`` (default espeak-ng) only serves models without a
    head. ``sample_rate``: the output rate (default the source's, 22050 Hz). ``should_stop`` is
    asked between tokens (barge-in): True ends the answer at once.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown speech task {task!r}: expected one of {', '.join(TASKS)}")
    _check_rate(sample_rate)
    if options is not None:
        require_single_beam(options)
    wave = _as_samples(samples)
    if model.has_speech_head:
        head = SpeechHead(model, voice, sample_rate)
        head.vocoder()  # a bad voice recording fails here, where it is asked for
        chunks = _speak_natively(model, wave, task, options or SPEECH, head, should_stop)
        return SpeechStream(chunks, head.rate)
    if voice is not None and os.path.isfile(voice):
        raise ConfigError(
            f"voice {os.fspath(voice)!r} is a recording, but {_name(model)} has no speech head to "
            "clone it with: pass a voice name of the TTS backend (espeak-ng: m1..m8, f1..f5), or "
            "the cosyvoice backend built with prompt_wav="
        )
    tts = _resolve_backend(backend)
    rate = sample_rate or tts.sample_rate
    speaker_voice = None if voice is None else os.fspath(voice)
    if task == "s2s_trans":
        answers = _translations(model, wave, options or TRANSLATION)
        chunks = _cascade(answers, tts, "en", speaker_voice, rate, should_stop)
    else:
        answers = _chat_reply(model, wave, options or CHAT)
        chunks = _cascade(answers, tts, None, speaker_voice, rate, should_stop)
    # espeak-ng checks a voice only when it speaks: check it here, where the request is made
    tts.stream("", "en", speaker_voice)
    return SpeechStream(chunks, rate)


def speak_reply(
    generation: Generation,
    backend: TTSBackend | str | None = None,
    language: str | None = None,
    voice: str | None = None,
    sample_rate: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SpeechStream:
    """Speak a text answer while it is generated token by token (e.g. a chat ``Reply`` that
    remembers its turn), each sentence as soon as the next one has begun.

    ``language`` ``en`` or ``zh``; None picks per sentence (Mandarin where it holds Chinese).
    """
    _check_rate(sample_rate)
    tts = _resolve_backend(backend)
    tts.stream("", language or "en", voice)  # checks the language and voice now
    rate = sample_rate or tts.sample_rate
    return SpeechStream(
        _cascade(iter([(generation, _as_written)]), tts, language, voice, rate, should_stop), rate
    )


def speak_natively(
    generation: SpeechGeneration,
    model: SpeechLLM,
    voice: str | os.PathLike | None = None,
    sample_rate: int | None = None,
    source: np.ndarray | None = None,
) -> SpeechStream:
    """Speak a speech answer with ``model``'s head while it is generated (e.g. a chat
    ``SpeechReply`` that remembers its turn), its audio vocoded as the latents arrive.

    One chunk per token (often empty: the vocoder waits for a few frames), so that a caller can
    pause between tokens; a stopped ``generation`` drops the audio not yet given. ``voice``: a
    recording (default the checkpoint's ``prompt.wav``); ``sample_rate`` as ``speech_to_speech``.
    ``source``: 16 kHz speech (N,) being translated, whose speaker's voice is used instead
    (``SpeechHead.follow``). Given a ``sample_rate``, the head is loaded at the first latents:
    an answer without speech never loads it.
    """
    _check_rate(sample_rate)
    head = SpeechHead(model, voice, sample_rate)
    if source is not None:
        head.follow(source)

    def chunks() -> Generator[SpeechChunk, None, None]:
        yield from head.steps(generation)
        yield SpeechChunk("", head.close(), head.rate)

    return SpeechStream(chunks(), head.rate)


def speech_to_speech_full(
    model: SpeechLLM,
    samples: np.ndarray | str | os.PathLike,
    task: str = "s2s_trans",
    options: DecodingOptions | None = None,
    voice: str | os.PathLike | None = None,
    backend: TTSBackend | str | None = None,
    sample_rate: int | None = None,
) -> SpeechResult:
    """``speech_to_speech`` run to the end: the whole text and audio."""
    return speech_to_speech(model, samples, task, options, voice, backend, sample_rate).collect()


def text_to_speech(
    text: str,
    language: str = "en",
    voice: str | None = None,
    backend: TTSBackend | str | None = None,
    sample_rate: int | None = None,
) -> tuple[np.ndarray, int]:
    """Speak ``text`` (``en`` or ``zh``) with a TTS backend (default espeak-ng).

    -> (N,) int16 PCM and its rate (the backend's, 22050 Hz for espeak-ng, unless ``sample_rate``
    asks for another); empty for text with nothing to say.
    """
    if not isinstance(text, str):
        raise ConfigError(f"text must be a string, got {type(text).__name__}")
    _check_rate(sample_rate)
    tts = _resolve_backend(backend)
    chunks = list(tts.stream(text, language, voice))
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    rate = sample_rate or tts.sample_rate
    if rate != tts.sample_rate and pcm.size:
        pcm = resample_pcm16(pcm, tts.sample_rate, rate)
    return pcm, rate


# --- the two ways to speak -----------------------------------------------------------------------


def _name(model: SpeechLLM) -> str:
    return str(model.paths.root) if model.paths is not None else "this model"


def _embed(model: SpeechLLM, wave: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        return model.embed([wave])  # (1, Ta, H), (1,)


def _prompt_inputs(model: SpeechLLM, wave: np.ndarray, prompt_task: str) -> torch.Tensor:
    """Audio embeddings then the released prompt: (1, L, H)."""
    embeds, lengths = _embed(model, wave)
    with torch.inference_mode():
        inputs, _ = splice(model.llm, model.tokenizer, embeds, lengths, [build_prompt(prompt_task)])
    return inputs


def _segments(wave: np.ndarray, task: str) -> list[np.ndarray]:
    """Translation reads long audio in pieces of at most 30 s; a question is answered whole."""
    if task == "s2s_chat":
        return [wave]
    return [wave[a:b] for a, b in split_long(wave)]


class SpeechHead:
    """The HiFi-GAN head speaking one stream of answers: latents in, audio at ``rate`` out.

    The generator, the speaker vector of ``voice`` and the vocoder are made at the first latents
    (or ``vocoder()``); ``rate`` defaults to the generator's own (which then loads it now).
    ``follow`` makes the next answers speak in the voice of the speech they translate.
    """

    def __init__(self, model: SpeechLLM, voice: str | os.PathLike | None, rate: int | None) -> None:
        self.model = model
        self.voice = voice
        self.rate = rate or model.speech_generator().cfg.sample_rate
        self.speaker: torch.Tensor | None = None  # (1, 512, 1) of the source speech followed
        self._vocoder: StreamingVocoder | None = None
        self._resampler: _Resampler | None = None

    def vocoder(self) -> StreamingVocoder:
        """The vocoder of this stream, made on first use."""
        if self._vocoder is None:
            generator = self.model.speech_generator()
            speaker = self.speaker
            if speaker is None:
                speaker = self.model.speaker_vector(self.voice)  # (1, 512, 1)
            self._vocoder = StreamingVocoder(generator, speaker)
            if self._resampler is None:
                self._resampler = _Resampler(self._vocoder.sample_rate, self.rate)
        return self._vocoder

    def follow(self, source: np.ndarray) -> None:
        """Speak the next answer in the voice of ``source``, 16 kHz speech (N,) of the speaker
        it translates: a speaker vector of the head's own encoder, taken afresh for each
        speaker turn. Too little speech for one (under 0.5 s, or silent) keeps the voice so
        far. Call between answers (the vocoder is flushed at each answer's end)."""
        try:
            self.speaker = self.model.speaker_vector(source)
        except AudioError:
            return
        self._vocoder = None  # made again, with this speaker, at the next latents

    def push(self, latents: torch.Tensor) -> np.ndarray:
        """Latents (T, H) -> the audio that became final."""
        if not latents.shape[0]:
            return _silence()
        vocoder = self.vocoder()
        assert self._resampler is not None
        return self._resampler.push(vocoder.push(latents))

    def end(self, interrupted: bool) -> np.ndarray:
        """An answer ended: the rest of its audio, or none at all when it was stopped."""
        if self._vocoder is None:
            return _silence()
        if interrupted:
            self._vocoder.reset()
            return _silence()
        assert self._resampler is not None
        return self._resampler.push(self._vocoder.flush())

    def close(self) -> np.ndarray:
        """The stream ended: what the rate conversion still holds."""
        if self._resampler is None:
            return _silence()
        return self._resampler.push(_silence(), last=True)

    def steps(self, generation: SpeechGeneration) -> Iterator[SpeechChunk]:
        """One chunk per step of ``generation`` (text delta, audio; often both empty), then
        the rest of its audio."""
        for step in generation:
            yield SpeechChunk(step.text, self.push(step.latents), self.rate)
        yield SpeechChunk("", self.end(generation.interrupted), self.rate)


def _speak_natively(
    model: SpeechLLM,
    wave: np.ndarray,
    task: str,
    options: DecodingOptions,
    head: SpeechHead,
    should_stop: Callable[[], bool] | None,
) -> Generator[SpeechChunk, None, None]:
    deltas = _Deltas()
    said = ""  # text of the finished segments
    for piece in _segments(wave, task):
        if task == "s2s_trans" and head.voice is None:
            head.follow(piece)  # the translation speaks in the voice of who said it
        generation = SpeechGeneration(
            model.llm,
            model.tokenizer,
            _prompt_inputs(model, piece, task),
            options,
            should_stop=should_stop,
        )
        for chunk in head.steps(generation):
            text = deltas.push(_joined(said, generation.text))
            if text or chunk.audio.size:
                yield SpeechChunk(text, chunk.audio, head.rate)
        if generation.interrupted:
            return
        said = _joined(said, generation.text)
    yield from _audio_chunk(head.close(), head.rate)


def _translations(
    model: SpeechLLM, wave: np.ndarray, options: DecodingOptions
) -> Iterator[tuple[Generation, Callable[[str, bool], str]]]:
    """Per piece of the audio: its ``ast`` answer as it is generated, and how to read it."""
    for piece in _segments(wave, "s2s_trans"):
        inputs = _prompt_inputs(model, piece, "ast")
        yield Generation(model.llm, model.tokenizer, inputs, options), _Translation(model.is_mtl).of


def _chat_reply(
    model: SpeechLLM, wave: np.ndarray, options: DecodingOptions
) -> Iterator[tuple[Generation, Callable[[str, bool], str]]]:
    """The answer to the question in ``wave``, in the chat layout the model was trained on."""
    embeds, lengths = _embed(model, wave)
    # A one-turn conversation: nothing before it, nothing remembered after it.
    reply = Conversation(model).reply(embeds[0, : int(lengths[0])], question="", options=options)
    yield reply, _as_written


def _as_written(text: str, done: bool) -> str:
    return text


def _cascade(
    answers: Iterator[tuple[Generation, Callable[[str, bool], str]]],
    tts: TTSBackend,
    language: str | None,
    voice: str | None,
    rate: int,
    should_stop: Callable[[], bool] | None,
) -> Generator[SpeechChunk, None, None]:
    """Text answers generated token by token, each sentence spoken as soon as it is complete."""
    resampler = _Resampler(tts.sample_rate, rate)
    deltas = _Deltas()
    said = ""  # text of the finished answers
    for generation, read in answers:
        speaker = _SentenceSpeaker(tts, language, voice)
        done = False
        while not done:
            if should_stop is not None and should_stop():
                generation.stop()
                return
            done = next(generation, None) is None
            text = read(generation.text, done)
            audio = [resampler.push(a) for a in speaker.feed(text, done)]
            delta = deltas.push(_joined(said, text))
            if delta or audio:
                yield SpeechChunk(delta, np.concatenate(audio) if audio else _silence(), rate)
        said = _joined(said, read(generation.text, True))
    yield from _audio_chunk(resampler.push(_silence(), last=True), rate)


def _audio_chunk(audio: np.ndarray, rate: int) -> Iterator[SpeechChunk]:
    if audio.size:
        yield SpeechChunk("", audio, rate)


def _joined(said: str, text: str) -> str:
    return f"{said} {text}" if said and text else said or text


# --- command line (wired into ``mooer`` by mooer/cli.py) -----------------------------------------


def s2st_command(
    audio: str,
    out: str,
    *,
    model: str | None = None,
    llm: str | None = None,
    variant: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    heads: int = 4,
    task: str = "s2s_trans",
    voice: str | None = None,
    backend: str = "espeak",
    rate: int | None = None,
    max_new_tokens: int | None = None,
    quantize: str | None = None,
) -> int:
    """``mooer s2st IN.wav -o OUT.wav``: the text is printed as it comes, the speech written."""
    from dataclasses import replace

    from mooer.model import load_model

    speech_llm = load_model(
        model, llm=llm, task="ast", variant=variant, device=device, dtype=dtype,
        attention_heads=heads, quantize=quantize,
    )  # fmt: skip
    options = None
    if max_new_tokens is not None:
        default = SPEECH if speech_llm.has_speech_head else (TRANSLATION, CHAT)[task == "s2s_chat"]
        options = replace(default, max_new_tokens=max_new_tokens)
    stream = speech_to_speech(
        speech_llm, audio, task=task, options=options, voice=voice, backend=backend,
        sample_rate=rate,
    )  # fmt: skip
    audio_chunks = []
    for chunk in stream:
        print(chunk.text, end="", flush=True)
        audio_chunks.append(chunk.audio)
    print(flush=True)
    result = SpeechResult(stream.text, np.concatenate(audio_chunks), stream.sample_rate)
    result.save(out)
    if not result.audio.size:
        print(f"mooer: the model said nothing to speak: {out} is empty", file=sys.stderr)
    return 0


def speak_command(
    text: str,
    out: str,
    *,
    language: str = "en",
    voice: str | None = None,
    backend: str = "espeak",
    rate: int | None = None,
) -> int:
    """``mooer speak "text" -o OUT.wav`` (text ``-``: read standard input)."""
    if text == "-":
        text = sys.stdin.read()
    pcm, sample_rate = text_to_speech(text, language, voice, backend, rate)
    if not pcm.size:
        raise ConfigError(f"nothing to say in {text[:60]!r}: it has no letters or digits")
    _write_pcm16(out, pcm, sample_rate)
    return 0
