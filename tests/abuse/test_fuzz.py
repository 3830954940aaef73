"""Property-based fuzz of the three websocket protocols' message parsers, through a real server.

Frames are arbitrary text, arbitrary JSON, and events shaped like each protocol's own with every
field either a plausible value or an arbitrary JSON one. Whatever a frame holds, the server
answers within the protocol: no ``server_error``, the connection stays open, and nothing is
logged as an error (checked by the suite's log fixture). After each frame a sentinel event,
which the server refuses by name, marks where the frame's answers end.
"""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from tests.abuse.conftest import manual_final, read_until

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SENTINEL = "fuzz.sentinel"

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates too (escaped)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def field(*plausible: object) -> st.SearchStrategy:
    """A plausible value of a field, or any JSON value."""
    return st.sampled_from(plausible) | json_values


def some_of(**fields: st.SearchStrategy) -> st.SearchStrategy:
    """Objects holding any subset of ``fields``."""
    return st.fixed_dictionaries({}, optional=fields)


def event(kind: str, **fields: st.SearchStrategy) -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {"type": st.just(kind)}, optional={"event_id": json_values, **fields}
    )


audio = st.binary(max_size=4800).map(lambda b: base64.b64encode(b).decode()) | json_values
fmt = some_of(type=field("audio/pcm", "audio/pcmu", "audio/pcma"), rate=field(16000, 24000, 8000))
turn_detection = st.none() | some_of(
    type=field("server_vad", "semantic_vad"),
    threshold=field(0.2, 0.5, 0.99),
    prefix_padding_ms=field(0, 300, 2000),
    silence_duration_ms=field(1, 500, 10_000),
    eagerness=field("low", "medium", "high", "auto"),
    create_response=field(True, False),
    interrupt_response=field(True, False),
    idle_timeout_ms=json_values,
)
voice = field(None, "alloy", "m1", "f2")
realtime_session = some_of(
    type=field("realtime", "transcription"),
    audio=some_of(
        input=some_of(format=fmt, turn_detection=turn_detection, transcription=field(None, {})),
        output=some_of(format=fmt, voice=voice),
    ),
    instructions=field("", "answer briefly"),
    output_modalities=field(["text"], ["audio"], ["text", "audio"]),
    modalities=field(["text"], ["audio"]),
    input_audio_format=field("pcm16", "g711_ulaw", "g711_alaw"),
    output_audio_format=field("pcm16"),
    turn_detection=turn_detection,
    voice=voice,
    mooer=some_of(
        task=field("asr", "ast", "asr+ast", "chat"), partial_interval_ms=field(0, 100, 480)
    ),
)
message = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
realtime_events = st.one_of(
    event("session.update", session=realtime_session | json_values),
    event("transcription_session.update", session=realtime_session),
    event("input_audio_buffer.append", audio=audio),
    event("input_audio_buffer.commit"),
    event("input_audio_buffer.clear"),
    event("conversation.item.create", item=field(message)),
    event("response.cancel", response_id=json_values),
    event("output_audio_buffer.clear"),
    event("conversation.item.delete"),
    st.fixed_dictionaries({"type": json_values}),
)
translation_events = st.one_of(
    event(
        "session.update",
        session=some_of(
            type=field("translation"),
            model=field("mooer"),
            audio=some_of(
                input=some_of(transcription=field(None, {}), noise_reduction=json_values),
                output=some_of(language=field("en", "zh"), voice=voice),
            ),
        )
        | json_values,
    ),
    event("session.input_audio_buffer.append", audio=audio),
    st.fixed_dictionaries({"type": json_values}),
)
funasr_frames = some_of(
    mode=field("online", "offline", "2pass"),
    chunk_size=field([5, 10, 5], "5,10,5", [0, 1, 0], [1000, 1000, 1000]),
    wav_name=field("demo"),
    wav_format=field("pcm", "wav"),
    audio_fs=field(8000, 16000, 44100),
    is_speaking=field(True, False),
    hotwords=json_values,
    itn=json_values,
    chunk_interval=json_values,
    api_key=json_values,
)


def frames(events: st.SearchStrategy) -> st.SearchStrategy:
    """Text frames: mostly protocol-shaped events, also any JSON and any text."""
    return st.one_of(
        events.map(json.dumps),
        events.map(json.dumps),
        json_values.map(json.dumps),
        st.text(max_size=30),
    )


@pytest.fixture(scope="module")
def fuzzed(start_server):
    return start_server()


def _openai_exchange(ws, frame: str) -> None:
    ws.send(frame)
    ws.send(json.dumps({"type": SENTINEL}))
    answers = read_until(ws, lambda e: e["type"] == "error" and SENTINEL in e["error"]["message"])
    for answer in answers:
        assert answer["type"] != "error" or answer["error"]["type"] != "server_error", answer


@pytest.mark.parametrize(
    ("path", "events"),
    [
        ("/v1/realtime", realtime_events),  # session.update switches it to transcription too
        ("/v1/realtime/translations", translation_events),
    ],
)
def test_openai_protocols_answer_any_frame_within_the_protocol(fuzzed, path, events):
    with connect(f"ws://{fuzzed.host}:{fuzzed.port}{path}") as ws:
        read_until(ws, lambda e: e["type"] == "session.created")

        @FUZZ
        @given(frames(events))
        def exchange(frame: str) -> None:
            _openai_exchange(ws, frame)

        exchange()


def test_funasr_answers_any_frame_within_the_protocol(fuzzed):
    sentinel = json.dumps({"mode": SENTINEL})

    with connect(f"ws://{fuzzed.host}:{fuzzed.port}/funasr") as ws:

        def answers_until_sentinel() -> list[dict]:
            while True:
                ws.send(sentinel)
                answers = read_until(
                    ws, lambda r: SENTINEL in str(r.get("error")) or r.get("code") == "busy"
                )
                if answers[-1].get("code") != "busy":
                    return answers
                answers += read_until(ws, lambda r: r["is_final"])  # the file being finished

        @FUZZ
        @given(frames(funasr_frames))
        def exchange(frame: str) -> None:
            ws.send(frame)
            for answer in answers_until_sentinel():
                assert answer.get("code") != "server_error", answer

        exchange()


def test_after_the_fuzz_a_normal_client_is_served(fuzzed, speech, offline):
    url = f"ws://{fuzzed.host}:{fuzzed.port}/v1/realtime?intent=transcription"
    assert manual_final(url, speech[0]) == offline([speech[0]])[0].text
