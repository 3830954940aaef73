"""The real server over the bundled demo model, driven by real clients: ``mooer stream`` and the
openai SDK. What it sends back equals the offline API on the same audio (``transcribe()``,
``Conversation``), so these hold for any retrained demo model; the only fixed text is the model
card's example transcript.

Speech is the example recordings (``examples/audio``) and chat questions spoken at test time by
espeak-ng in a voice the demo model never heard in training (as tests/agent/test_session.py).
"""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

import numpy as np

from mooer.agent.session import SessionConfig
from mooer.asr.segmenter import cut
from mooer.audio import SAMPLE_RATE, load_audio
from mooer.llm.conversation import CHAT, Conversation
from mooer.server.commands import stream_main
from mooer.transcribe import transcribe
from tests.server.wire import as_received, at_24k, say, send_realtime

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "audio"
DEFAULTS = SessionConfig()  # what ``mooer serve`` gives every session
PAUSE = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)  # before each utterance
SILENCE = np.zeros(SAMPLE_RATE, dtype=np.float32)  # after it: the VAD ends the turn
FINAL = "conversation.item.input_audio_transcription.completed"
CLEAR_LINE = "\r\033[K"  # how ``mooer stream`` rewrites its partial line on a terminal
# The second question is about the first's answer, so only a memory of the first answers it.
QUESTIONS = ("what is ten plus five", "and plus one")


def _turn_at_24k(audio: np.ndarray) -> bytes:
    """An utterance as a Realtime client sends it: a pause before, silence after, PCM16 24 kHz."""
    return at_24k(np.concatenate([PAUSE, audio, SILENCE]))


class _Terminal(io.StringIO):
    """stdout and stderr as one terminal: ``mooer stream`` shows partials there, in order with
    the finals."""

    def isatty(self) -> bool:
        return True


def test_mooer_stream_shows_partials_then_the_offline_transcript(demo, demo_server, monkeypatch):
    wav = EXAMPLES / "zh_weather.wav"
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    # At the pace of speech, so partials are due while the utterance goes on.
    status = stream_main(str(wav), server=demo_server.url, mode="asr", realtime=True)
    monkeypatch.undo()
    assert status == 0, terminal.getvalue()

    *shown, printed = [piece for piece in terminal.getvalue().split(CLEAR_LINE) if piece]
    expected = transcribe(demo, [wav])[0].text
    assert printed == f"{expected}\n"  # the final, on stdout: the one line printed
    assert expected == "星期一会下雨"  # the model card's example
    # Partials were shown while speech went on; the final's delta rewrote the line last.
    assert len(shown) >= 2 and all(shown), shown
    assert shown[-1] == expected


def test_ast_over_the_sdk_gives_the_offline_translation(demo, demo_server):
    from openai import AsyncOpenAI

    wav = EXAMPLES / "zh_translate.wav"
    pcm = _turn_at_24k(load_audio(wav))

    async def run() -> list:
        client = AsyncOpenAI(base_url=f"{demo_server.url}/v1", api_key="unused")
        events = []
        async with client.realtime.connect(
            model="mooer", extra_query={"intent": "transcription"}
        ) as conn:
            session = {"type": "transcription", "mooer": {"task": "ast"}}
            await conn.session.update(session=session)  # type: ignore[arg-type]
            await send_realtime(conn, pcm)
            await conn.send({"type": "session.close"})  # type: ignore[arg-type]
            async for event in conn:
                events.append(event)
        return events

    events = asyncio.run(run())
    finals = [e.transcript for e in events if e.type == FINAL]
    offline = transcribe(demo, [wav], task="ast")[0]
    assert finals == [offline.translation]
    assert offline.translation.isascii()  # English, not the Mandarin transcript
    assert events[-1].type == "session.closed"


def test_a_spoken_chat_answers_the_second_turn_from_the_first(demo, demo_server):
    from openai import AsyncOpenAI

    turns = [_turn_at_24k(say(q)) for q in QUESTIONS]

    async def run() -> tuple[list[str], list[str]]:
        client = AsyncOpenAI(base_url=f"{demo_server.url}/v1", api_key="unused")
        transcripts, answers = [], []
        async with client.realtime.connect(model="mooer") as conn:
            session = {"type": "realtime", "output_modalities": ["text"], "mooer": {"task": "chat"}}
            await conn.session.update(session=session)  # type: ignore[arg-type]
            for pcm in turns:  # the second is spoken once the first is answered
                await send_realtime(conn, pcm)
                async for event in conn:
                    if event.type == FINAL:
                        transcripts.append(event.transcript)
                    if event.type == "response.done":
                        assert event.response.status == "completed"
                        answers.append(event.response.output[0].content[0].text)
                        break
        return transcripts, answers

    transcripts, answers = asyncio.run(run())
    assert len(transcripts) == len(answers) == 2 and all(answers), (transcripts, answers)

    # Each turn's audio as the server's VAD cut it from the one stream it decoded.
    heard = as_received(b"".join(turns))
    waves = [u.audio for u in cut(heard, DEFAULTS.vad)]
    assert len(waves) == 2
    assert transcripts == [
        r.text for r in transcribe(demo, waves, vad=None)
    ]  # the questions it heard
    embeds, lengths = demo.embed([waves[1]])
    second = embeds[0, : int(lengths[0])]  # (Ta, H)

    remembering = Conversation(demo)
    remembering.append(transcripts[0], answers[0])
    expected = remembering.answer(second, CHAT, question=transcripts[1]).answer
    assert answers[1] == expected
    # Without the first turn the same question gets another answer: the memory answered it.
    forgetful = Conversation(demo).answer(second, CHAT, question=transcripts[1]).answer
    assert forgetful != answers[1]


def test_a_file_gives_the_same_segments_and_text_through_transcribe_and_http(demo, demo_server):
    import httpx

    wav = EXAMPLES / "en_directions.wav"
    (offline,) = transcribe(demo, [wav], options=DEFAULTS.final_options)  # as `mooer transcribe`
    assert offline.text == "the park is to the north"  # examples/audio/README.md
    with open(wav, "rb") as f:
        reply = httpx.post(
            f"{demo_server.url}/v1/audio/transcriptions",
            files={"file": (wav.name, f)},
            data={"model": "mooer", "response_format": "verbose_json"},
            timeout=120,
        )
    assert reply.status_code == 200
    assert reply.json()["text"] == offline.text
    assert [(s["start"], s["end"]) for s in reply.json()["segments"]] == offline.segments


def test_typed_questions_get_their_answers(demo_server):
    """A user message typed (``input_text``) then ``response.create``, as Pipecat and LiveKit
    send a text turn: the demo model answers it as it answers the question spoken, the next
    typed turn from the first's answer, and after its own greeting too."""
    from openai import AsyncOpenAI

    async def ask(conn, question: str | None) -> str:
        if question is not None:
            content = [{"type": "input_text", "text": question}]
            await conn.conversation.item.create(
                item={"type": "message", "role": "user", "content": content}
            )
        await conn.response.create()
        async for event in conn:
            if event.type == "response.done":
                assert event.response.status == "completed"
                return event.response.output[0].content[0].text
        raise AssertionError("the connection ended before response.done")

    async def run(questions) -> list[str]:
        client = AsyncOpenAI(base_url=f"{demo_server.url}/v1", api_key="unused")
        async with client.realtime.connect(model="mooer") as conn:
            session = {"type": "realtime", "output_modalities": ["text"], "mooer": {"task": "chat"}}
            await conn.session.update(session=session)  # type: ignore[arg-type]
            return [await ask(conn, q) for q in questions]

    answers = asyncio.run(run(["what is seven plus eight", "and plus one"]))
    assert answers == ["fifteen", "sixteen"]
    greeted = asyncio.run(run([None, "what is ten plus five"]))  # the bot speaks first
    assert greeted == ["hello how are you", "fifteen"]
