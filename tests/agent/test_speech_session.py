"""Speech output of live sessions: spoken chat replies, barge-in, spoken translations, and the
chat instructions.

Real speech in (the AISHELL clips of the s3tokenizer wheel) and fabricated models: one without a
speech head speaks through the real espeak-ng backend (the cascade), the omni one with its own
HiFi-GAN head, taught to answer the first clip aloud; greedy decoding keeps every reply
reproducible offline.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soxr
import torch

from mooer.agent import events as ev
from mooer.agent.engine import Engine
from mooer.agent.session import SessionConfig
from mooer.asr.vad import SpeechEnded, StreamingVad
from mooer.audio import SAMPLE_RATE
from mooer.errors import ConfigError
from mooer.llm.conversation import CHAT, Conversation
from mooer.llm.decoding import OFFLINE, STREAMING, splice
from mooer.llm.prompts import build_prompt
from mooer.llm.speech import SpeechGeneration, spoken_reply
from mooer.model import load_model
from mooer.speak import speak_reply, text_to_speech
from mooer.tts.backend import split_sentences
from mooer.tts.vocoder import vocode
from tests.agent.recorder import Recorder
from tests.taught import CHAT_REPLY, TRANSLATION, teach_to_speak

CHUNK = SAMPLE_RATE // 50  # 20 ms
REPLY = dataclasses.replace(CHAT, max_new_tokens=12)
SPOKEN_CHAT = SessionConfig(
    mode="chat",
    partial_interval_ms=0,
    final_options=dataclasses.replace(OFFLINE, max_new_tokens=6),
    partial_options=dataclasses.replace(STREAMING, max_new_tokens=6),
    chat_options=REPLY,
    speech_output=True,
)


SPEAKING = dataclasses.replace(STREAMING, max_new_tokens=64)  # the head's audio tokens


@pytest.fixture(scope="module")
def clips(aishell_clips) -> list[np.ndarray]:
    silence = np.zeros(SAMPLE_RATE, dtype=np.float32)
    return [np.concatenate([clip, silence]) for clip in aishell_clips]


@pytest.fixture(scope="module")
def utterance(clips) -> np.ndarray:
    """The first clip as the session's VAD cuts it."""
    vad = StreamingVad(dataclasses.replace(SPOKEN_CHAT.vad, max_segment_s=20.0))
    return next(e for e in vad.feed(clips[0]) + vad.flush() if isinstance(e, SpeechEnded)).audio


@pytest.fixture(scope="module")
def model(fabricated):
    """A model without a speech head (the fabricated MTL-5K's ast variant): the cascade."""
    root = fabricated("mtl-5k")
    return load_model(root, llm=root.parent / "llm", task="ast", device="cpu")


@pytest.fixture(scope="module")
def omni(fabricated, utterance):
    """The fabricated omni model, taught to answer ``utterance`` aloud (``teach_to_speak``)."""
    model = load_model(fabricated("omni"), device="cpu")
    with torch.no_grad():
        embeds, lengths = model.embed([utterance])  # fixed: the encoder is not trained
    teach_to_speak(model, embeds[:, : int(lengths[0])])  # (1, Ta, H)
    return model


def _spoken_over(session, recorder: Recorder, speech: np.ndarray) -> ev.ResponseDone:
    """Once the reply is audible, the user speaks ``speech``: the reply's audio is cleared once,
    none of it follows the clear and it never completes. Returns the reply's ResponseDone."""
    recorder.wait_for(lambda e: isinstance(e, ev.ResponseAudioDelta), WAIT_S)  # it speaks
    _feed(session, speech)
    recorder.wait_for(lambda e: isinstance(e, ev.ResponseDone), WAIT_S)
    assert session.wait_idle(60)
    first = recorder.of(ev.ResponseDone)[0]
    events = recorder.events
    cleared = [i for i, e in enumerate(events) if isinstance(e, ev.AudioCleared)]
    assert len(cleared) == 1 and events[cleared[0]].response_id == first.response_id
    spoke = [
        i
        for i, e in enumerate(events)
        if isinstance(e, ev.ResponseAudioDelta) and e.response_id == first.response_id
    ]
    assert spoke and max(spoke) < cleared[0]
    assert not [e for e in recorder.of(ev.ResponseAudioDone) if e.response_id == first.response_id]
    return first


def _engine(model):
    engine = Engine(model, threads=1)
    yield engine
    engine.close(timeout=30)


@pytest.fixture
def engine(model):
    yield from _engine(model)


@pytest.fixture
def omni_engine(omni):
    yield from _engine(omni)


WAIT_S = 60.0  # a spoken reply: LLM steps and espeak-ng sentences on a shared CPU


def _feed(session, samples: np.ndarray) -> None:
    for start in range(0, samples.size, CHUNK):
        session.feed(samples[start : start + CHUNK])


def _audio_of(recorder: Recorder, response_id: str) -> bytes:
    return b"".join(
        e.audio for e in recorder.of(ev.ResponseAudioDelta) if e.response_id == response_id
    )


def test_a_spoken_reply_is_its_text_spoken_sentence_by_sentence(engine, model, clips, utterance):
    recorder = Recorder()
    session = engine.open(SPOKEN_CHAT, recorder)
    _feed(session, clips[0])
    recorder.wait_for(lambda e: isinstance(e, ev.ResponseDone), WAIT_S)
    session.close()
    assert session.wait_closed(30)

    done = recorder.of(ev.ResponseDone)[0]
    assert done.status == "completed" and done.text
    kinds = [type(e) for e in recorder.events]
    first_audio = kinds.index(ev.ResponseAudioDelta)
    assert kinds.index(ev.ResponseStarted) < first_audio < kinds.index(ev.ResponseAudioDone)
    assert kinds.index(ev.ResponseAudioDone) == kinds.index(ev.ResponseDone) - 1
    assert ev.AudioCleared not in kinds
    assert {e.sample_rate for e in recorder.of(ev.ResponseAudioDelta)} == {24000}

    # The same reply, generated and spoken offline, gives the same speech (espeak-ng's output
    # varies by a few samples from call to call, so its length is compared).
    question = recorder.of(ev.Transcript)[0].text
    embeds, lengths = model.embed([utterance])
    reply = Conversation(model).reply(embeds[0, : lengths[0]], question=question, options=REPLY)
    expected = speak_reply(reply, sample_rate=24000).collect()
    assert expected.text == done.text
    sent = np.frombuffer(_audio_of(recorder, done.response_id), dtype="<i2").astype(np.int32)
    assert abs(sent.size - expected.audio.size) <= expected.audio.size // 100


def test_barge_in_clears_the_audio_and_no_delta_follows(engine, clips):
    endless = dataclasses.replace(CHAT, max_new_tokens=5000, eos_bias=-1e9)
    recorder = Recorder()
    session = engine.open(dataclasses.replace(SPOKEN_CHAT, chat_options=endless), recorder)
    _feed(session, clips[0])
    first = _spoken_over(session, recorder, clips[1][:SAMPLE_RATE])
    assert first.status == "cancelled"
    events = recorder.events
    cleared = next(i for i, e in enumerate(events) if isinstance(e, ev.AudioCleared))
    started = next(i for i, e in enumerate(events) if isinstance(e, ev.SpeechStarted) and i > 0)
    assert started < cleared
    session.close(flush=False)
    assert session.wait_closed(30)


def test_an_ast_session_speaks_each_final_translation(engine, clips):
    recorder = Recorder()
    config = dataclasses.replace(SPOKEN_CHAT, mode="ast", output_sample_rate=16000, voice="f2")
    session = engine.open(config, recorder)
    _feed(session, clips[0])
    session.close()
    assert session.wait_closed(60)

    translation = recorder.of(ev.Translation)[0]
    spoken = recorder.of(ev.TranslationAudioDelta)
    expected = [
        text_to_speech(s, "en", "f2", sample_rate=16000)[0]
        for s in split_sentences(translation.text)
    ]
    assert len(spoken) == len([pcm for pcm in expected if pcm.size]) >= 1
    assert all(e.item_id == translation.item_id and e.sample_rate == 16000 for e in spoken)
    for sent, pcm in zip(spoken, [pcm for pcm in expected if pcm.size]):
        assert abs(len(sent.audio) // 2 - pcm.size) <= pcm.size // 100  # espeak-ng varies a little
    kinds = [type(e) for e in recorder.events]
    assert kinds.index(ev.Translation) < kinds.index(ev.TranslationAudioDelta)


def test_a_text_session_sends_no_audio(engine, clips):
    recorder = Recorder()
    session = engine.open(dataclasses.replace(SPOKEN_CHAT, speech_output=False), recorder)
    _feed(session, clips[0])
    recorder.wait_for(lambda e: isinstance(e, ev.ResponseDone), WAIT_S)
    session.close()
    assert session.wait_closed(30)
    audio_events = (ev.ResponseAudioDelta, ev.ResponseAudioDone, ev.AudioCleared)
    assert not [e for e in recorder.events if isinstance(e, audio_events)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"voice": "no-such-voice"}, "no-such-voice"),
        ({"tts_backend": "festival"}, "festival"),
        ({"output_sample_rate": 100}, "output_sample_rate"),
    ],
)
def test_bad_speech_settings_fail_at_open(engine, change, message):
    with pytest.raises(ConfigError, match=message):
        engine.open(dataclasses.replace(SPOKEN_CHAT, **change))


# --- the speech head --------------------------------------------------------------------------

NATIVE_CHAT = dataclasses.replace(SPOKEN_CHAT, speech_options=SPEAKING)


class _Marks:
    """Records the session's events and how many LLM steps had run when some of them came."""

    def __init__(self, model) -> None:
        self.recorder = Recorder()
        self.steps = 0
        self.first_audio: int | None = None
        self.done: int | None = None
        self._hook = model.llm.get_decoder().register_forward_hook(self._step)

    def _step(self, *_) -> None:
        self.steps += 1

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.ResponseAudioDelta | ev.TranslationAudioDelta):
            self.first_audio = self.steps if self.first_audio is None else self.first_audio
        if isinstance(event, ev.ResponseDone):
            self.done = self.steps
        self.recorder(event)

    def remove(self) -> None:
        self._hook.remove()


def _head_audio(model, latents: torch.Tensor, rate: int = 24000, voice=None) -> np.ndarray:
    """Whole-utterance vocoding of ``latents`` at ``rate`` in ``voice`` (default prompt.wav):
    what streaming must equal."""
    whole = vocode(model.speech_generator(), latents, model.speaker_vector(voice))
    return soxr.resample(whole, model.speech_generator().cfg.sample_rate, rate)


def _sent(deltas) -> np.ndarray:
    pcm = np.frombuffer(b"".join(e.audio for e in deltas), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def test_the_head_speaks_a_reply_while_it_is_generated(omni_engine, omni, clips, utterance):
    marks = _Marks(omni)
    try:
        session = omni_engine.open(NATIVE_CHAT, marks)
        _feed(session, clips[0])
        marks.recorder.wait_for(lambda e: isinstance(e, ev.ResponseDone), WAIT_S)
        session.close()
        assert session.wait_closed(30)
    finally:
        marks.remove()
    recorder = marks.recorder
    done = recorder.of(ev.ResponseDone)[0]
    assert done.status == "completed" and done.text == CHAT_REPLY
    assert "".join(e.delta for e in recorder.of(ev.ResponseTextDelta)) == CHAT_REPLY
    kinds = [type(e) for e in recorder.events]
    assert kinds.index(ev.ResponseTextDelta) < kinds.index(ev.ResponseAudioDelta)
    assert kinds.index(ev.ResponseAudioDone) == kinds.index(ev.ResponseDone) - 1
    # Audio went out while the LLM was still generating the reply's audio tokens.
    assert marks.first_audio is not None and marks.done is not None
    assert marks.first_audio < marks.done - 8
    deltas = recorder.of(ev.ResponseAudioDelta)
    assert len(deltas) >= 3 and {e.sample_rate for e in deltas} == {24000}
    # The same reply made offline: its latents vocoded whole, at 24 kHz.
    embeds, lengths = omni.embed([utterance])
    reply = spoken_reply(
        Conversation(omni), embeds[0, : int(lengths[0])], question="", options=REPLY,
        audio_options=SPEAKING,
    )  # fmt: skip
    list(reply)
    assert reply.text == CHAT_REPLY and reply.latents.shape[0] == 1 + 24 - 5  # less the tail
    expected = _head_audio(omni, reply.latents)
    np.testing.assert_allclose(_sent(deltas), expected, atol=2e-4)
    # Remembered as text, as a written reply is.
    (turn,) = session.conversation.turns
    assert turn.answer == CHAT_REPLY and turn.question == recorder.of(ev.Transcript)[0].text


def test_barge_in_stops_the_head_at_once(omni_engine, omni, clips):
    endless = dataclasses.replace(STREAMING, max_new_tokens=5000, eos_bias=-1e9)
    recorder = Recorder()
    config = dataclasses.replace(NATIVE_CHAT, speech_options=endless)
    session = omni_engine.open(config, recorder)
    _feed(session, clips[0])
    first = _spoken_over(session, recorder, clips[1][:SAMPLE_RATE])
    assert first.status == "cancelled" and first.text == CHAT_REPLY
    assert session.conversation.turns[0].answer == CHAT_REPLY
    assert session.conversation.turns[0].interrupted
    session.close(flush=False)
    assert session.wait_closed(30)


def test_an_ast_session_speaks_the_translation_with_the_head(omni_engine, omni, clips, utterance):
    config = dataclasses.replace(NATIVE_CHAT, mode="ast")
    marks = _Marks(omni)
    try:
        session = omni_engine.open(config, marks)
        _feed(session, clips[0])
        session.close()
        assert session.wait_closed(60)
    finally:
        marks.remove()
    recorder = marks.recorder
    (translation,) = recorder.of(ev.Translation)
    spoken = recorder.of(ev.TranslationAudioDelta)
    assert len(spoken) >= 3
    assert all(e.item_id == translation.item_id and e.sample_rate == 24000 for e in spoken)
    kinds = [type(e) for e in recorder.events]
    assert kinds.index(ev.Translation) < kinds.index(ev.TranslationAudioDelta)
    # The head's s2s_trans answer made offline, text decoded as the final's (one beam).
    embeds, lengths = omni.embed([utterance])
    inputs, _ = splice(omni.llm, omni.tokenizer, embeds, lengths, [build_prompt("s2s_trans")])
    text_options = dataclasses.replace(config.final_options, num_beams=1)
    generation = SpeechGeneration(
        omni.llm, omni.tokenizer, inputs, text_options, audio_options=SPEAKING
    )
    list(generation)
    assert generation.text == TRANSLATION and generation.audio_tokens == 20
    # in the voice of who spoke: the utterance's own speaker vector
    expected = _head_audio(omni, generation.latents, voice=utterance)
    np.testing.assert_allclose(_sent(spoken), expected, atol=2e-4)


def test_a_reply_the_head_leaves_unspoken_is_spoken_by_the_backend(omni_model, clips):
    """The untaught omni model never writes <|audio_start|>: its text is spoken by espeak-ng."""
    engine = Engine(omni_model, threads=1)
    recorder = Recorder()
    try:
        session = engine.open(NATIVE_CHAT, recorder)
        _feed(session, clips[0])
        recorder.wait_for(lambda e: isinstance(e, ev.ResponseDone), WAIT_S)
    finally:
        engine.close(timeout=30)
    done = recorder.of(ev.ResponseDone)[0]
    assert done.status == "completed" and done.text

    def language(sentence: str) -> str:  # Mandarin where a sentence holds Chinese
        return "zh" if any("\u4e00" <= c <= "\u9fff" for c in sentence) else "en"

    expected = sum(
        text_to_speech(s, language(s), sample_rate=24000)[0].size
        for s in split_sentences(done.text)
    )
    sent = _sent(recorder.of(ev.ResponseAudioDelta)).size
    assert expected > 0 and abs(sent - expected) <= expected // 100


# --- instructions -----------------------------------------------------------------------------


def test_instructions_reach_the_llm_and_can_change_mid_session(omni_model, clips):
    text_chat = dataclasses.replace(SPOKEN_CHAT, speech_output=False)
    engine = Engine(omni_model, threads=1)
    recorder = Recorder()
    instructions = "You are a pirate."
    try:
        session = engine.open(text_chat, recorder)
        assert session.conversation.instructions == ""  # the released system turn
        session.add_message("hello")
        session.create_response()
        recorder.wait_for(lambda e: isinstance(e, ev.ResponseDone), WAIT_S)
        session.set_instructions(instructions)
        session.add_message("again")
        session.create_response()
        recorder.wait_for(lambda e: len(recorder.of(ev.ResponseDone)) == 2, WAIT_S)
    finally:
        engine.close(timeout=30)
    first, second = (e.text for e in recorder.of(ev.ResponseDone))
    assert session.config.instructions == instructions
    offline = Conversation(omni_model)
    assert "".join(t for _, t in offline.reply_text("hello", REPLY)) == first
    offline.instructions = instructions  # the turn is kept, the cache rebuilt
    assert "".join(t for _, t in offline.reply_text("again", REPLY)) == second
    plain = Conversation(omni_model)
    plain.append("hello", first)
    assert "".join(t for _, t in plain.reply_text("again", REPLY)) != second
    with pytest.raises(ConfigError, match="instructions"):
        SessionConfig(instructions=None)
