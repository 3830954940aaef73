"""Live sessions on the bundled demo model: speech in, meaning out.

The speech is the example recordings (``examples/audio``) and questions spoken at test time by
espeak-ng in a voice the demo model never heard in training; each is fed the way a client sends
it, 20 ms at a time with silence around it, so the voice activity detector finds the turns.
Results are held to exact equality with the offline API on the same audio (``transcribe()``,
``Conversation``) and to what was said.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mooer.agent import events as ev
from mooer.agent.engine import Engine
from mooer.agent.session import SessionConfig, score_heard
from mooer.agent.stable_text import StableText
from mooer.asr.partial_context import PartialEmbeds
from mooer.asr.vad import SpeechEnded, StreamingVad, VadConfig
from mooer.audio import SAMPLE_RATE, load_audio, ms_to_samples
from mooer.errors import AudioError, ConfigError
from mooer.llm.conversation import CHAT, Conversation
from mooer.llm.decoding import OFFLINE, STREAMING
from mooer.model import load_model
from mooer.speak import text_to_speech
from mooer.tasks import decode
from mooer.train.talk import heldout_sentences, spoken_talk
from mooer.transcribe import transcribe
from mooer.tts.backend import EspeakBackend
from tests.agent.recorder import Recorder

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "audio"
CHUNK = SAMPLE_RATE // 50  # 20 ms
ASR = SessionConfig()  # the defaults: what a server's session gets
CHAT_MODE = dataclasses.replace(ASR, mode="chat")
PAUSE = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)  # before each utterance
SILENCE = np.zeros(SAMPLE_RATE, dtype=np.float32)  # after it: the VAD ends the turn


@pytest.fixture(scope="module")
def model():
    return load_model()  # the bundled demo model


@pytest.fixture
def engine(model):
    engine = Engine(model, threads=1)
    yield engine
    engine.close(timeout=30)


def _say(text: str) -> np.ndarray:
    """``text`` spoken by espeak-ng's en-us+f4 (a held-out voice of the demo model), 16 kHz."""
    pcm, _ = text_to_speech(text, "en", "f4", EspeakBackend(rate=180, pitch=50), SAMPLE_RATE)
    return pcm.astype(np.float32) / 32768.0


def _turn(audio: np.ndarray) -> np.ndarray:
    """An utterance as a live stream carries it: a pause before, silence after."""
    return np.concatenate([PAUSE, audio, SILENCE])


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    """What is said -> its audio: Mandarin example recordings and English spoken now."""
    return {
        "星期一会下雨": load_audio(EXAMPLES / "zh_weather.wav"),
        "我想要一个蓝色的包": load_audio(EXAMPLES / "zh_translate.wav"),
        "the park is to the north": _say("the park is to the north"),
    }


@pytest.fixture(scope="module")
def stream(clips) -> np.ndarray:
    """An English and a Mandarin utterance, each with a pause before and silence after."""
    return np.concatenate([_turn(clips["the park is to the north"]), _turn(clips["星期一会下雨"])])


def _segments(stream: np.ndarray) -> list[SpeechEnded]:
    """The utterances the VAD finds in ``stream``, found offline."""
    vad = StreamingVad(dataclasses.replace(VadConfig(), max_segment_s=ASR.max_segment_s))
    return [e for e in vad.feed(stream) + vad.flush() if isinstance(e, SpeechEnded)]


def _feed(session, samples: np.ndarray, settle: bool = False) -> None:
    """Feed in 20 ms chunks; ``settle``: let the worker finish after each (every partial runs)."""
    for start in range(0, samples.size, CHUNK):
        session.feed(samples[start : start + CHUNK])
        if settle:
            assert session.wait_idle(timeout=30)


def _offline(model, audio: np.ndarray, task: str = "asr", options=OFFLINE):
    return transcribe(model, [audio], task=task, options=options, vad=None)[0]  # an utterance


# -- stable text -------------------------------------------------------------------------------


def test_stable_text_only_grows_and_the_final_completes_it():
    track = StableText()
    partials = ["hello", "hello wor", "hello world how", "hullo world how are"]
    assert [track.update(p) for p in partials] == ["", "", "hello", ""]
    assert track.shown == "hello"  # a hypothesis contradicting the stable text is cut to it
    partials = ["hello world how are", "hello world how are you"]
    assert [track.update(p) for p in partials] == ["", " world how"]
    assert track.stable == "hello world how" and track.shown == "hello world how are you"
    assert track.finish("hello world how are you") == " are you"
    revised = StableText()
    for p in ["今天", "今天天气", "今天天汽很"]:
        revised.update(p)
    assert revised.stable == "今天天" and revised.shown == "今天天汽很"
    revised.update("明天天气很好")  # contradicts the stable text: shown up to it only
    assert revised.shown == "今天天"
    # The final is authoritative; what was sent stays, and the rest follows what it matched.
    assert revised.finish("明天天气很好") == "气很好"
    assert revised.stable == "今天天气很好" and revised.shown == "明天天气很好"


# -- results -------------------------------------------------------------------------------------


def test_streaming_gives_partials_then_the_offline_final(engine, model, stream):
    recorder = Recorder()
    session = engine.open(ASR, recorder)
    _feed(session, stream, settle=True)
    session.close()
    assert session.wait_closed(30)

    segments = _segments(stream)
    started = recorder.of(ev.SpeechStarted)
    stopped = recorder.of(ev.SpeechStopped)
    finals = recorder.of(ev.Transcript)
    assert [e.text for e in finals] == ["the park is to the north", "星期一会下雨"]
    assert [e.language for e in finals] == ["en", "zh"]
    assert (
        [e.item_id for e in started] == [e.item_id for e in stopped] == [e.item_id for e in finals]
    )
    for seg, start, stop, final in zip(segments, started, stopped, finals, strict=True):
        assert start.audio_start_ms == seg.start * 1000 // SAMPLE_RATE
        assert stop.audio_end_ms == seg.end * 1000 // SAMPLE_RATE
        assert final.text == _offline(model, seg.audio).text

        item = [e for e in recorder.events if getattr(e, "item_id", None) == start.item_id]
        kinds = [type(e).__name__ for e in item]
        assert kinds[0] == "SpeechStarted" and kinds[-1] == "Transcript"
        assert kinds.index("SpeechStopped") + 1 == kinds.index("Committed")
        assert kinds.index("TranscriptDelta") < kinds.index("SpeechStopped")  # partials came first
        deltas = [e for e in item if isinstance(e, ev.TranscriptDelta)]
        stable = ""
        for delta in deltas:
            assert delta.stable_text == stable + delta.delta  # append-only
            assert delta.text.startswith(delta.stable_text)
            stable = delta.stable_text
        assert stable == final.text  # the deltas add up to the final
    # A partial every 480 ms of each utterance (1.5-2 s with the VAD's padding), each decoded.
    assert session.stats.partials >= 4 and session.stats.partials_skipped == 0
    assert session.stats.finals == 2 and len(session.stats.final_latency_s) == 2
    assert isinstance(recorder.events[-1], ev.SessionClosed)


def test_continuous_speech_gets_a_final_per_sentence(engine):
    """Eight held-out sentences 150 ms apart (no 500 ms silence anywhere): each sentence is a
    turn that ends in the pause after it, with a transcript and a translation. (The texts are
    held to what was said with one miss allowed: the demo model is borderline on some of these
    segments, and the VAD's TorchScript network may move a boundary by a window between runs.)"""
    talk = spoken_talk(heldout_sentences(8), pause_s=0.15)
    recorder = Recorder()
    session = engine.open(dataclasses.replace(ASR, mode="asr+ast", partial_interval_ms=0), recorder)
    _feed(session, talk.audio)
    session.close()
    assert session.wait_closed(60)

    stopped = [e.audio_end_ms for e in recorder.of(ev.SpeechStopped)]
    assert len(stopped) == len(talk.spans) == 8
    for end_ms, (_, end) in zip(stopped, talk.spans):
        assert (
            end * 1000 // SAMPLE_RATE - 32
            <= end_ms
            <= (end + 0.15 * SAMPLE_RATE) * 1000 // SAMPLE_RATE
        )
    transcripts = [e.text for e in recorder.of(ev.Transcript)]
    translations = [e.text for e in recorder.of(ev.Translation)]
    assert len(transcripts) == len(translations) == 8
    # Each sentence's final says where its wait went: 96 ms of pause at least (three 32 ms
    # windows) ended it, inside the 150 ms pause; then it queued and was decoded.
    timings = [e.timing for e in recorder.of(ev.Transcript)]
    assert all(0.096 <= t.endpoint <= 0.2 for t in timings[:-1]), timings
    assert all(t.queued >= 0 and t.decode > 0 and not t.early for t in timings)
    assert sum(t == zh for t, (zh, _) in zip(transcripts, talk.sentences)) >= 7
    assert sum(t == en for t, (_, en) in zip(translations, talk.sentences)) >= 6


def test_a_fast_speaker_gets_a_final_per_sentence_not_one_at_20_s(engine):
    """Eight held-out sentences 70 ms apart, shorter than any endpoint wait: each utterance
    is cut once it is 3 s long, at its best pause, which is the one between two sentences
    (espeak-ng's audio varies a little between calls: one boundary may be missed)."""
    talk = spoken_talk(heldout_sentences(8), pause_s=0.07)
    recorder = Recorder()
    session = engine.open(dataclasses.replace(ASR, partial_interval_ms=0), recorder)
    _feed(session, talk.audio)
    session.close()
    assert session.wait_closed(60)

    stopped = [e.audio_end_ms * SAMPLE_RATE // 1000 for e in recorder.of(ev.SpeechStopped)]
    assert len(talk.spans) - 1 <= len(stopped) <= len(talk.spans)
    ends = [end for _, end in talk.spans]
    for cut in stopped[:-1]:  # in the pause after a sentence (the last: in the silence)
        assert any(0 <= cut - end <= 0.07 * SAMPLE_RATE for end in ends), (cut, ends)
    said = {zh for zh, _ in talk.sentences}
    assert sum(e.text in said for e in recorder.of(ev.Transcript)) >= len(talk.spans) - 2


def test_early_finals_are_decoded_in_the_pause_that_ends_the_sentence(engine):
    """Interpretation (``early_finals``): each sentence's final is decoded from the first
    window of the pause after it, and that pause ending the sentence makes it the final: the
    same English as finals decoded after the endpoint (the audio ends 100 ms earlier in its
    silence), with no decode left after the endpoint. Chat turns never decode early."""
    talk = spoken_talk(heldout_sentences(4), pause_s=0.8)
    got = {}
    for early in (False, True):
        recorder = Recorder()
        config = dataclasses.replace(ASR, mode="ast", partial_interval_ms=0, early_finals=early)
        session = engine.open(config, recorder)
        _feed(session, talk.audio)
        session.close()
        assert session.wait_closed(60)
        got[early] = recorder.of(ev.Translation), session.stats
    (plain, _), (early, stats) = got[False], got[True]
    assert len(plain) == len(early) == 4
    assert sum(a.text == b.text for a, b in zip(plain, early)) >= 3
    assert not any(t.timing.early for t in plain)
    assert all(t.timing.early for t in early) and stats.early_finals_kept == 4
    assert stats.early_finals >= 4  # and one for each pause inside a sentence, if any
    chat = engine.open(dataclasses.replace(CHAT_MODE, auto_response=False, early_finals=True))
    _feed(chat, talk.audio[: talk.spans[1][0]])
    chat.close()
    assert chat.wait_closed(60) and chat.stats.early_finals == 0 and chat.stats.finals == 1


@pytest.mark.parametrize(("mode", "turns"), [("asr", 2), ("chat", 1)])
def test_a_300ms_pause_ends_a_sentence_but_not_a_chat_turn(engine, mode, turns):
    talk = spoken_talk(heldout_sentences(2), pause_s=0.3)
    recorder = Recorder()
    config = dataclasses.replace(ASR, mode=mode, auto_response=False, partial_interval_ms=0)
    session = engine.open(config, recorder)
    _feed(session, talk.audio)
    session.close()
    assert session.wait_closed(30)
    assert len(recorder.of(ev.SpeechStopped)) == turns


def test_a_partial_is_the_greedy_decode_of_the_speech_so_far(engine, model, clips):
    recorder = Recorder()
    session = engine.open(dataclasses.replace(ASR, partial_interval_ms=1000), recorder)
    audio = _turn(clips["我想要一个蓝色的包"])
    _feed(session, audio, settle=True)
    [start] = recorder.of(ev.SpeechStarted)
    first = recorder.of(ev.TranscriptDelta)[0]
    # The first partial is due at the first chunk boundary where the utterance holds 1 s.
    begin = start.audio_start_ms * SAMPLE_RATE // 1000
    end = -(-(begin + SAMPLE_RATE) // CHUNK) * CHUNK
    assert first.text == _offline(model, audio[begin:end], options=STREAMING).text
    session.close(flush=False)


def test_asr_and_ast_give_the_transcript_and_the_english_translation(engine, model, clips):
    recorder = Recorder()
    session = engine.open(dataclasses.replace(ASR, mode="asr+ast", partial_interval_ms=0), recorder)
    stream = np.concatenate([_turn(clips["我想要一个蓝色的包"]), _turn(clips["星期一会下雨"])])
    _feed(session, stream)
    session.close()
    assert session.wait_closed(30)
    segments = _segments(stream)
    transcripts = [e.text for e in recorder.of(ev.Transcript)]
    translations = [e.text for e in recorder.of(ev.Translation)]
    assert transcripts == [_offline(model, s.audio).text for s in segments]
    assert translations == [_offline(model, s.audio, "ast").translation for s in segments]
    assert transcripts == ["我想要一个蓝色的包", "星期一会下雨"]
    assert translations == ["i want a blue bag", "it will rain on monday"]
    # Without partials, the final's delta carries the whole text (append-only streams).
    assert [d.delta for d in recorder.of(ev.TranscriptDelta)] == transcripts
    assert [d.delta for d in recorder.of(ev.TranslationDelta)] == translations


def test_an_mtl_model_answers_both_in_one_decode(fabricated, aishell_clips):
    root = fabricated("mtl-5k")
    mtl = load_model(root, llm=root.parent / "llm", task="mtl", device="cpu")
    engine = Engine(mtl, threads=1)
    recorder = Recorder()
    short = dataclasses.replace(OFFLINE, max_new_tokens=6)  # its random words never end
    config = SessionConfig(
        mode="asr+ast", turn_detection=False, partial_interval_ms=0, final_options=short
    )
    session = engine.open(config, recorder)
    _feed(session, aishell_clips[0])
    session.commit()
    engine.close(timeout=30)
    expected = _offline(mtl, aishell_clips[0], "mtl", short)
    assert [e.text for e in recorder.of(ev.Transcript)] == [expected.text]
    assert [e.text for e in recorder.of(ev.Translation)] == [expected.translation]


def test_manual_turns_commit_the_buffer(engine, model, clips):
    recorder = Recorder()
    session = engine.open(dataclasses.replace(ASR, turn_detection=False), recorder)
    assert session.commit() is None
    assert recorder.of(ev.Error)[0].code == "empty_commit"
    _feed(session, clips["星期一会下雨"], settle=True)
    item = session.commit()
    assert session.wait_idle(30)
    assert recorder.of(ev.Committed) == [ev.Committed(item)]
    assert recorder.of(ev.Transcript)[0].text == "星期一会下雨"
    assert recorder.of(ev.SpeechStarted) == []  # no VAD in manual mode
    assert len(recorder.of(ev.TranscriptDelta)) >= 1


def test_partials_of_a_long_utterance_encode_bounded_windows(engine, model):
    """A 12 s turn: each partial encodes a window of bounded length (``partial_context``) and,
    once the utterance is ``long_after_ms`` long, comes ``long_interval_ms`` after the last;
    with None every 480 ms the whole utterance so far. The final is the offline decode either
    way."""
    audio = spoken_talk(heldout_sentences(5, "en"), (0.2, 0.3)).audio
    context = ASR.partial_context
    encoded, partials = {}, {}
    for chosen in (context, None):
        recorder = Recorder()
        config = dataclasses.replace(ASR, turn_detection=False, partial_context=chosen)
        session = engine.open(config, recorder)
        _feed(session, audio, settle=True)
        session.commit()
        assert session.wait_idle(60)
        stats = session.stats
        assert stats.partials_skipped == 0
        encoded[chosen], partials[chosen] = stats.partial_audio_s, stats.partials
        assert [e.text for e in recorder.of(ev.Transcript)] == [_offline(model, audio).text]
        session.close(flush=False)
    seconds, interval = audio.size / SAMPLE_RATE, ASR.partial_interval_ms / 1000
    assert partials[None] == pytest.approx(seconds / interval, abs=1)
    lengths = [k * interval for k in range(1, partials[None] + 1)]  # s, about: chunk boundaries
    assert encoded[None] == pytest.approx(sum(lengths), rel=0.05)
    short = context.long_after_ms / 1000  # partials every 480 ms up to that
    spaced = (seconds - short) / (context.long_interval_ms / 1000)
    assert partials[context] == pytest.approx(short / interval + spaced, abs=1)
    window = (context.left_ms + context.redo_ms + context.long_interval_ms) / 1000  # at most
    assert encoded[context] <= partials[context] * (window + 2 * CHUNK / SAMPLE_RATE)
    assert partials[context] * window < encoded[None] / 3


def test_partial_windows_of_sessions_are_encoded_in_one_batch(engine, model):
    """Bounded-window partials go through the engine's encoder batch, as finals do, and decode
    as each window encoded alone does (the shorter one padded in the batch)."""
    audio = spoken_talk(heldout_sentences(2, "en"), (0.2, 0.3)).audio
    interval = ms_to_samples(ASR.partial_interval_ms)
    ends = [3 * interval, 2 * interval]  # each session's last partial: 1.44 s, 0.96 s
    recorders = [Recorder(), Recorder()]
    manual = dataclasses.replace(ASR, turn_detection=False)
    sessions = [engine.open(manual, r) for r in recorders]
    held, release = threading.Event(), threading.Event()
    engine.submit(engine.open(manual), "control", lambda: held.set() or release.wait(30))
    assert held.wait(30)  # the worker is busy: each session's latest partial replaces the last
    for session, end in zip(sessions, ends, strict=True):
        _feed(session, audio[: end + CHUNK])
    release.set()
    assert all(session.wait_idle(60) for session in sessions)
    assert engine.encode_batches() == [2]  # both sessions' windows in one forward
    for session, recorder, end in zip(sessions, recorders, ends, strict=True):
        assert session.stats.partials == 1
        assert session.stats.partial_audio_s == end / SAMPLE_RATE
        with torch.inference_mode():
            embeds = PartialEmbeds(ASR.partial_context).embed(model.embed, audio[:end])
        lengths = torch.tensor([len(embeds)])
        alone = decode(model, embeds[None], lengths, "asr", STREAMING, step_by_step=True)
        assert recorder.of(ev.TranscriptDelta)[-1].text == alone[0].transcript


def test_clear_drops_the_utterance_in_progress(engine, model, clips):
    recorder = Recorder()
    session = engine.open(ASR, recorder)
    dropped_speech = clips["我想要一个蓝色的包"]
    half = np.concatenate([PAUSE, dropped_speech[: dropped_speech.size // 2]])
    _feed(session, half)
    [dropped] = recorder.of(ev.SpeechStarted)
    session.clear()
    # Partials of the dropped item may have come before clear(), never after it.
    before = [e for e in recorder.of(ev.TranscriptDelta) if e.item_id == dropped.item_id]
    after = np.concatenate([SILENCE, clips["星期一会下雨"], SILENCE])
    _feed(session, after)
    session.close()
    assert session.wait_closed(30)
    finals = recorder.of(ev.Transcript)
    assert [(e.item_id, e.text) for e in finals] == [
        (recorder.of(ev.SpeechStarted)[1].item_id, "星期一会下雨")
    ]
    assert [e for e in recorder.of(ev.TranscriptDelta) if e.item_id == dropped.item_id] == before
    # The VAD starts afresh, but stream time goes on: the second start counts the cleared audio.
    fresh = StreamingVad().feed(after)
    restart = recorder.of(ev.SpeechStarted)[1].audio_start_ms
    assert restart == (half.size + fresh[0].sample) * 1000 // SAMPLE_RATE


# -- chat ----------------------------------------------------------------------------------------

# The second is about the first's answer. The demo model answers few spoken chat questions right
# when decoding greedily (as a live reply must, token by token); this dialogue it gets right.
QUESTIONS = ("what is ten plus five", "and plus one")


def test_chat_two_turns_remember_the_first(engine, model):
    recorder = Recorder()
    session = engine.open(CHAT_MODE, recorder)
    first, second = (_turn(_say(q)) for q in QUESTIONS)
    _feed(session, first)
    recorder.wait_for(lambda e: isinstance(e, ev.ResponseDone))
    _feed(session, second)
    assert session.wait_idle(30)  # close() would cancel a reply still running
    session.close()
    assert session.wait_closed(30)

    transcripts = recorder.of(ev.Transcript)
    done = recorder.of(ev.ResponseDone)
    assert [(d.status, d.text) for d in done] == [
        ("completed", "fifteen"),
        ("completed", "sixteen"),
    ]
    assert len(session.stats.reply_latency_s) == 2
    assert [e.item_id for e in recorder.of(ev.ResponseStarted)] == [t.item_id for t in transcripts]
    for response in done:
        deltas = [
            e.delta
            for e in recorder.of(ev.ResponseTextDelta)
            if e.response_id == response.response_id
        ]
        assert "".join(deltas) == response.text
    turns = session.conversation.turns
    assert [(t.question, t.answer) for t in turns] == [
        (t.text, d.text) for t, d in zip(transcripts, done, strict=True)
    ]

    # The second reply is the one a conversation holding the first turn gives, and without that
    # turn the same question gets another answer: the memory is what answers it.
    audio = _segments(np.concatenate([first, second]))[1].audio
    embeds, lengths = model.embed([audio])
    reference = Conversation(model)
    reference.append(turns[0].question, turns[0].answer)
    expected = reference.answer(embeds[0, : lengths[0]], CHAT, question=turns[1].question)
    assert expected.answer == done[1].text
    forgetful = Conversation(model)
    alone = forgetful.answer(embeds[0, : lengths[0]], CHAT, question=turns[1].question)
    assert alone.answer != "sixteen"


def test_speech_during_a_reply_cancels_it(engine, clips):
    endless = dataclasses.replace(CHAT, max_new_tokens=5000, eos_bias=-1e9)
    recorder = Recorder()
    session = engine.open(dataclasses.replace(CHAT_MODE, chat_options=endless), recorder)
    _feed(session, _turn(_say(QUESTIONS[0])))
    recorder.wait_for(lambda e: isinstance(e, ev.ResponseTextDelta))
    barged = time.perf_counter()
    interruption = np.concatenate([PAUSE, clips["我想要一个蓝色的包"]])
    _feed(session, interruption[: SAMPLE_RATE * 3 // 2])  # the user speaks again
    recorder.wait_for(lambda e: isinstance(e, ev.ResponseDone))
    assert time.perf_counter() - barged < 5
    first = recorder.of(ev.ResponseDone)[0]
    assert first.status == "cancelled" and first.text
    turn = session.conversation.turns[0]
    assert turn.interrupted and turn.answer == first.text

    # The new turn gets its own reply, which cancel_response() stops.
    _feed(session, np.concatenate([interruption[SAMPLE_RATE * 3 // 2 :], SILENCE]))
    recorder.wait_for(
        lambda e: isinstance(e, ev.ResponseTextDelta) and e.response_id != first.response_id
    )
    assert session.cancel_response()
    recorder.wait_for(
        lambda e: isinstance(e, ev.ResponseDone) and e.response_id != first.response_id
    )
    assert [d.status for d in recorder.of(ev.ResponseDone)] == ["cancelled", "cancelled"]
    assert session.stats.responses_cancelled == 2 and not session.cancel_response()
    session.close()
    assert session.wait_closed(30)


def test_manual_chat_answers_on_request(engine, clips):
    recorder = Recorder()
    config = dataclasses.replace(CHAT_MODE, turn_detection=False, auto_response=False)
    session = engine.open(config, recorder)
    opening = session.create_response()  # no user turn yet: the assistant speaks first
    _feed(session, _say(QUESTIONS[0]))
    spoken = session.commit()
    first = session.create_response()
    typed = session.add_message("and now a typed question", item_id="client_1")
    second = session.create_response()
    assert session.wait_idle(30)
    assert recorder.of(ev.Error) == []
    started = recorder.of(ev.ResponseStarted)
    assert [(e.response_id, e.item_id) for e in started] == [
        (opening, None),  # answers the conversation as remembered
        (first, spoken),
        (second, None),  # the typed question is remembered already
    ]
    assert typed == "client_1"
    assert [e.status for e in recorder.of(ev.ResponseDone)] == ["completed"] * 3
    messages = session.conversation.messages
    assert [(m.role, m.id) for m in messages] == [
        ("assistant", started[0].output_item_id),
        ("user", spoken),
        ("assistant", started[1].output_item_id),
        ("user", "client_1"),
        ("assistant", started[2].output_item_id),
    ]
    questions = [t.question for t in session.conversation.turns]
    assert questions == [recorder.of(ev.Transcript)[0].text, "and now a typed question"]
    session.reset()
    assert session.wait_idle(30)
    assert session.conversation.turns == []
    with pytest.raises(ConfigError, match="mode 'chat'"):
        engine.open(ASR).create_response()


# -- many sessions, bad input ---------------------------------------------------------------------


def test_eight_interleaved_sessions_all_get_their_finals(engine, clips):
    recorders = [Recorder() for _ in range(8)]
    sessions = [engine.open(ASR, r) for r in recorders]
    audio = _turn(clips["星期一会下雨"])
    for start in range(0, audio.size, CHUNK):
        for session in sessions:
            session.feed(audio[start : start + CHUNK])
    for session in sessions:
        session.close()
    assert all(session.wait_closed(60) for session in sessions)
    for session, recorder in zip(sessions, recorders, strict=True):
        finals = recorder.of(ev.Transcript)
        assert [e.text for e in finals] == ["星期一会下雨"]
        assert all(e.item_id.startswith(f"item_{session.id}_") for e in finals)
    assert sum(s.stats.partials for s in sessions) > 0


def test_sessions_heard_then_scored_together_get_what_feeding_gives(engine, clips):
    """A server's sessions ``hear`` frames as they come and the VAD scores them together
    (``score_heard``, a round of windows per network call): each gets the turns at the same
    offsets and the same finals as ``feed`` gives it alone; what a session heard after the
    last scoring is scored by its ``close``."""
    said = ["星期一会下雨", "the park is to the north", "我想要一个蓝色的包"]
    streams = [np.concatenate([np.zeros(k * 2900, np.float32), _turn(clips[t])]) for k, t in
               enumerate(said)]  # fmt: skip

    def turns(recorder: Recorder) -> list[tuple]:
        kinds = (ev.SpeechStarted, ev.SpeechStopped, ev.Transcript)
        return [
            (type(e).__name__, getattr(e, "audio_start_ms", getattr(e, "audio_end_ms", None)),
             getattr(e, "text", None))
            for e in recorder.events if isinstance(e, kinds)
        ]  # fmt: skip

    alone = []
    for stream in streams:
        recorder = Recorder()
        session = engine.open(ASR, recorder)
        _feed(session, stream)
        session.close()
        assert session.wait_closed(60)
        alone.append(turns(recorder))
    recorders = [Recorder() for _ in streams]
    sessions = [engine.open(ASR, r) for r in recorders]
    unscored = min(s.size for s in streams) - int(1.2 * SAMPLE_RATE)  # ends of speech among it
    for k, start in enumerate(range(0, max(s.size for s in streams), CHUNK)):
        for session, stream in zip(sessions, streams):
            if start < stream.size:
                session.hear(stream[start : start + CHUNK])
        if k % 5 == 4 and start < unscored:  # every 100 ms, not in the last 1.2 s
            score_heard(sessions)
    for session in sessions:
        session.close()
    assert all(session.wait_closed(60) for session in sessions)
    assert [turns(r) for r in recorders] == alone
    assert [[e[2] for e in a if e[0] == "Transcript"] for a in alone] == [[t] for t in said]


def test_finals_queued_together_are_encoded_in_one_batch(engine, clips):
    said = list(clips)
    recorders = [Recorder() for _ in said]
    manual = dataclasses.replace(ASR, turn_detection=False)
    sessions = [engine.open(manual, r) for r in recorders]
    held, release = threading.Event(), threading.Event()
    engine.submit(engine.open(manual), "control", lambda: held.set() or release.wait(30))
    assert held.wait(30)  # the worker is busy: the utterances pile up
    for session, text in zip(sessions, said, strict=True):
        _feed(session, clips[text])
        session.commit()
    release.set()
    assert all(session.wait_idle(60) for session in sessions)
    assert engine.encode_batches() == [len(said)]  # one forward for every session's utterance
    for recorder, text in zip(recorders, said, strict=True):
        assert [e.text for e in recorder.of(ev.Transcript)] == [text]


def test_bad_chunks_raise_and_the_session_goes_on(engine, clips):
    recorder = Recorder()
    other = Recorder()
    session = engine.open(ASR, recorder)
    bystander = engine.open(ASR, other)
    nan = np.full(CHUNK, np.nan, dtype=np.float32)
    with pytest.raises(AudioError, match="NaN"):
        session.feed(nan)
    with pytest.raises(AudioError, match="dtype int16"):
        session.feed(np.zeros(CHUNK, dtype=np.int16))
    with pytest.raises(AudioError, match=r"shape \(2, 320\)"):
        session.feed(np.zeros((2, CHUNK), dtype=np.float32))
    for s in (session, bystander):
        _feed(s, _turn(clips["星期一会下雨"]))
        s.close()
        assert s.wait_closed(30)
    for r in (recorder, other):
        assert [e.text for e in r.of(ev.Transcript)] == ["星期一会下雨"]
    with pytest.raises(ConfigError, match="closed"):
        session.feed(SILENCE)


def test_a_failing_callback_does_not_stop_the_engine(engine, clips):
    def explode(event: ev.Event) -> None:
        raise ValueError("client bug")

    recorder = Recorder()
    broken = engine.open(ASR, explode)
    healthy = engine.open(ASR, recorder)
    audio = _turn(clips["星期一会下雨"])
    for start in range(0, audio.size, CHUNK):
        broken.feed(audio[start : start + CHUNK])
        healthy.feed(audio[start : start + CHUNK])
    broken.close()
    healthy.close()
    assert broken.wait_closed(30) and healthy.wait_closed(30)
    assert [e.text for e in recorder.of(ev.Transcript)] == ["星期一会下雨"]
    assert broken.stats.finals == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"mode": "dictation"}, "mode"),
        ({"partial_interval_ms": 50}, "partial_interval_ms"),
        ({"partial_interval_ms": 480.0}, "partial_interval_ms"),
        ({"max_segment_s": 31}, "max_segment_s"),
        ({"max_segment_s": 2.0}, "max_segment_s"),  # not above vad.cut_search_s
        ({"max_context_tokens": 10}, "max_context_tokens"),
        ({"turn_detection": "yes"}, "turn_detection"),
        ({"vad": {"threshold": 0.5}}, "vad"),
        ({"final_options": "offline"}, "final_options"),
        ({"chat_options": dataclasses.replace(CHAT, num_beams=2)}, "chat_options"),
        ({"partial_options": OFFLINE}, "partial_options"),
    ],
)
def test_bad_config_names_the_field(change, field):
    with pytest.raises(ConfigError, match=f"SessionConfig.{field}"):
        SessionConfig(**change)
