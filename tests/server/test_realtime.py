"""/v1/realtime driven by the openai SDK itself and by plain websocket frames."""

from __future__ import annotations

import asyncio
import base64
import json
import re

import httpx
import numpy as np
import pytest
import websockets

from mooer.audio import SAMPLE_RATE, resample
from mooer.server.pcm import encode_pcm16

CHUNK = SAMPLE_RATE // 10  # 100 ms
FINAL = "conversation.item.input_audio_transcription.completed"


def ws_url(server, path: str = "/v1/realtime", query: str = "model=mooer") -> str:
    return f"ws://{server.host}:{server.port}{path}?{query}"


class Client:
    """A plain websocket client that speaks the Realtime events as JSON."""

    def __init__(self, ws) -> None:
        self.ws = ws

    async def send(self, kind: str, **fields) -> None:
        await self.ws.send(json.dumps({"type": kind, **fields}))

    async def recv(self, timeout: float = 30.0) -> dict:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def until(self, kind: str, timeout: float = 60.0) -> list[dict]:
        """Events up to and including the first of type ``kind``."""
        seen = []
        while not seen or seen[-1]["type"] != kind:
            seen.append(await self.recv(timeout))
        return seen

    async def configure(self, **session) -> dict:
        await self.send("session.update", session=session)
        return (await self.until("session.updated"))[-1]["session"]

    async def stream(self, samples: np.ndarray, binary: bool = True) -> None:
        pcm = encode_pcm16(samples)
        step = CHUNK * 2
        for i in range(0, len(pcm), step):
            if binary:
                await self.ws.send(pcm[i : i + step])
            else:
                await self.send(
                    "input_audio_buffer.append", audio=base64.b64encode(pcm[i : i + step]).decode()
                )


def manual_16k(task: str, kind: str = "transcription") -> dict:
    return {
        "type": kind,
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}
        },
        "mooer": {"task": task},
    }


async def _connect(server, query: str = "model=mooer&intent=transcription"):
    ws = await websockets.connect(ws_url(server, query=query), max_size=None)
    client = Client(ws)
    created = await client.recv()
    assert created["type"] == "session.created"
    return client


def test_sdk_session_streams_partials_then_the_final(server, offline, speech):
    from openai import AsyncOpenAI

    wave = speech[0]
    at_24k = resample(wave, SAMPLE_RATE, 24000)

    async def run() -> list:
        client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused")
        events = []
        async with client.realtime.connect(model="mooer") as conn:
            await conn.session.update(
                session={"type": "transcription", "mooer": {"task": "asr"}}  # type: ignore
            )
            pcm = encode_pcm16(at_24k)
            for i in range(0, len(pcm), 4800):  # 100 ms at 24 kHz
                await conn.input_audio_buffer.append(
                    audio=base64.b64encode(pcm[i : i + 4800]).decode()
                )
                await asyncio.sleep(0.04)  # 2.5x real time: partials have time to run
            async for event in conn:
                events.append(event)
                if event.type == FINAL:
                    break
        return events

    events = asyncio.run(run())
    kinds = [e.type for e in events]
    assert kinds[0] == "session.created" and "session.updated" in kinds
    order = [
        kinds.index(k)
        for k in (
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            FINAL,
        )
    ]
    assert order == sorted(order)
    updated = next(e for e in events if e.type == "session.updated")
    assert updated.session.type == "transcription"
    assert updated.session.audio.input.format.rate == 24000
    deltas = [e for e in events if e.type == "conversation.item.input_audio_transcription.delta"]
    assert deltas and kinds.index(deltas[0].type) < kinds.index(FINAL)
    assert all(e.delta for e in deltas)  # a partial that only changed its tail sends none
    final = events[-1]
    assert final.item_id == deltas[0].item_id
    assert final.transcript.strip()


def test_manual_commit_final_equals_the_offline_transcript(server, offline, speech):
    wave = speech[1]

    async def run():
        client = await _connect(server)
        session = await client.configure(**manual_16k("asr"))
        assert session["audio"]["input"]["turn_detection"] is None
        assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 16000}
        await client.stream(wave, binary=False)
        await client.send("input_audio_buffer.commit")
        events = await client.until(FINAL)
        await client.ws.close()
        return events

    events = asyncio.run(run())
    kinds = [e["type"] for e in events]
    assert kinds.index("input_audio_buffer.committed") < kinds.index(FINAL)
    committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
    added = next(e for e in events if e["type"] == "conversation.item.added")
    assert added["item"]["id"] == committed["item_id"] and added["item"]["role"] == "user"
    assert events[-1]["item_id"] == committed["item_id"]
    assert events[-1]["transcript"] == offline([wave])[0].text
    assert events[-1]["usage"] == {"type": "duration", "seconds": len(wave) / SAMPLE_RATE}


@pytest.mark.parametrize("task", ["ast", "asr+ast"])
def test_translation_tasks(server, offline, speech, task):
    wave = speech[0]

    async def run():
        client = await _connect(server)
        await client.configure(**manual_16k(task))
        await client.stream(wave)  # binary frames
        await client.send("input_audio_buffer.commit")
        final = (
            "conversation.item.input_audio_translation.completed" if task == "asr+ast" else FINAL
        )
        events = await client.until(final)
        if task == "asr+ast" and FINAL not in [e["type"] for e in events]:
            events += await client.until(FINAL)
        await client.ws.close()
        return {e["type"]: e for e in events}

    got = asyncio.run(run())
    translation = offline([wave], "ast")[0].translation
    if task == "ast":  # the session's transcript is the English translation
        assert got[FINAL]["transcript"] == translation
    else:
        assert got[FINAL]["transcript"] == offline([wave])[0].text
        done = got["conversation.item.input_audio_translation.completed"]
        assert done["translation"] == translation


def test_chat_turns_spoken_and_typed_get_responses(server, speech):
    async def run():
        client = await _connect(server, query="model=mooer")
        session = await client.configure(
            **manual_16k("chat", kind="realtime"), output_modalities=["text"]
        )
        assert session["type"] == "realtime" and session["output_modalities"] == ["text"]
        await client.stream(speech[0][: 2 * SAMPLE_RATE])
        await client.send("input_audio_buffer.commit")
        await client.send("response.create")  # no turn detection: the client asks for replies
        spoken = await client.until("response.done")
        await client.send(
            "conversation.item.create",
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What is the weather?"}],
            },
        )
        await client.send("response.create")
        typed = await client.until("response.done")
        await client.ws.close()
        return spoken, typed

    spoken, typed = asyncio.run(run())
    kinds = [e["type"] for e in spoken]
    for kind in (
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.output_item.done",
        FINAL,
    ):
        assert kind in kinds
    assert kinds.index(FINAL) < kinds.index("response.created") < kinds.index("response.done")
    for events in (spoken, typed):
        done = events[-1]["response"]
        assert done["status"] == "completed"
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert text and done["output"][0]["content"][0]["text"] == text
        assert next(e for e in events if e["type"] == "response.output_text.done")["text"] == text
    added = next(e for e in typed if e["type"] == "conversation.item.added")
    assert added["item"]["content"] == [{"type": "input_text", "text": "What is the weather?"}]


def test_bad_messages_get_errors_and_the_session_goes_on(server, offline, speech):
    async def run():
        client = await _connect(server)
        replies = {}
        for name, message in [
            ("json", "{not json"),
            ("array", "[1, 2]"),
            ("no_type", json.dumps({"audio": "AAAA"})),
            ("unknown", json.dumps({"type": "input_audio_buffer.flush", "event_id": "ev1"})),
            (
                "unknown_item",
                json.dumps(
                    {"type": "conversation.item.retrieve", "item_id": "nope", "event_id": "ev2"}
                ),
            ),
            ("no_audio", json.dumps({"type": "input_audio_buffer.append"})),
            ("base64", json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"})),
            (
                "rate",
                json.dumps(
                    {
                        "type": "session.update",
                        "session": {
                            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 44100}}}
                        },
                    }
                ),
            ),
            (
                "vad",
                json.dumps(
                    {
                        "type": "session.update",
                        "session": {
                            "audio": {
                                "input": {"turn_detection": {"type": "server_vad", "threshold": 2}}
                            }
                        },
                    }
                ),
            ),
            ("task", json.dumps({"type": "session.update", "session": {"mooer": {"task": "tts"}}})),
            ("empty_commit", json.dumps({"type": "input_audio_buffer.commit"})),
            ("response", json.dumps({"type": "response.create"})),
            ("cancel", json.dumps({"type": "response.cancel"})),
        ]:
            await client.ws.send(message)
            reply = await client.recv()
            assert reply["type"] == "error", (name, reply)
            replies[name] = reply["error"]
        await client.ws.send(bytes([7, 200, 13]) * 333)  # binary garbage is just (noisy) audio
        session = await client.configure(**manual_16k("asr"))  # still serving
        await client.stream(speech[0])
        await client.send("input_audio_buffer.commit")
        final = (await client.until(FINAL))[-1]
        await client.ws.close()
        return replies, session, final

    replies, session, final = asyncio.run(run())
    assert replies["json"]["code"] == "invalid_json" and replies["array"]["code"] == "invalid_json"
    assert replies["no_type"]["code"] == "invalid_event"
    assert replies["unknown"]["code"] == "unknown_event"
    assert replies["unknown"]["event_id"] == "ev1"
    assert "input_audio_buffer.flush" in replies["unknown"]["message"]
    assert replies["unknown_item"]["code"] == "item_not_found"
    assert replies["unknown_item"]["param"] == "item_id"
    assert replies["unknown_item"]["event_id"] == "ev2"
    assert replies["no_audio"]["param"] == "audio"
    assert "base64" in replies["base64"]["message"]
    assert replies["rate"]["param"] == "session.audio.input.format.rate"
    assert "44100" in replies["rate"]["message"] and "24000" in replies["rate"]["message"]
    assert "threshold" in replies["vad"]["message"]
    assert replies["task"]["param"] == "session.mooer.task"
    assert replies["empty_commit"]["code"] == "input_audio_buffer_commit_empty"
    assert replies["response"]["code"] == "unsupported_for_task"
    assert replies["cancel"]["code"] == "response_cancel_not_active"
    assert session["mooer"]["task"] == "asr"
    assert final["transcript"]


def test_oversize_frames_are_refused_without_dropping_the_connection(start_server):
    server = start_server(max_message_bytes=8192)

    async def run():
        client = await _connect(server)
        await client.ws.send(b"\x00" * 10000)
        error = await client.recv()
        await client.ws.send(
            json.dumps(
                {
                    "type": "input_audio_buffer.append",
                    "audio": base64.b64encode(b"\0" * 9000).decode(),
                }
            )
        )
        error2 = await client.recv()
        session = await client.configure(**manual_16k("asr"))
        await client.ws.close()
        return error, error2, session

    error, error2, session = asyncio.run(run())
    assert error["error"]["code"] == "message_too_large" and "8192" in error["error"]["message"]
    assert error2["error"]["code"] == "message_too_large"
    assert session["type"] == "transcription"


def test_beta_field_names_are_understood(server):
    async def run():
        client = await _connect(server)
        session = await client.configure(
            input_audio_format="g711_ulaw",
            turn_detection=None,
            input_audio_transcription={"model": "whisper-1"},
        )
        await client.ws.close()
        return session

    session = asyncio.run(run())
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["input"]["turn_detection"] is None
    assert session["audio"]["input"]["transcription"] == {"model": "whisper-1"}


def test_concurrent_sessions_all_get_their_finals(server, offline, speech):
    n = 8
    waves = [speech[i % 2][: int((2.0 + 0.25 * i) * SAMPLE_RATE)] for i in range(n)]
    expected = [r.text for r in offline(waves)]
    before = _stages(httpx.get(f"{server.url}/metrics").text)

    async def one(wave):
        client = await _connect(server)
        await client.configure(**manual_16k("asr"))
        await client.stream(wave)
        await client.send("input_audio_buffer.commit")
        final = (await client.until(FINAL, timeout=120))[-1]
        await client.ws.close()
        return final["transcript"]

    async def run():
        return await asyncio.gather(*(one(w) for w in waves))

    assert asyncio.run(run()) == expected
    metrics = httpx.get(f"{server.url}/metrics").text
    count = re.search(r'mooer_final_latency_seconds_count\{protocol="realtime"\} (\d+)', metrics)
    assert count and int(count.group(1)) >= n
    # Each final's wait, by stage: manual commits heard no pause; every one was decoded.
    after = _stages(metrics)
    assert after["sum", "endpoint"] == before["sum", "endpoint"]
    assert after["count", "decode"] == before["count", "decode"] + n
    assert after["sum", "decode"] > before["sum", "decode"]


def _stages(metrics: str) -> dict[tuple[str, str], float]:
    """(sum or count, stage) -> value of the realtime series of mooer_final_stage_seconds."""
    found = re.findall(
        r'mooer_final_stage_seconds_(sum|count)\{protocol="realtime",stage="(\w+)"\} (\S+)', metrics
    )
    values = {(part, stage): float(value) for part, stage, value in found}
    return {
        (part, stage): values.get((part, stage), 0.0)
        for part in ("sum", "count")
        for stage in ("endpoint", "queued", "decode")
    }


def test_abrupt_disconnects_leave_the_server_serving(server, speech):
    async def run():
        for _ in range(3):
            client = await _connect(server)
            await client.configure(**manual_16k("asr"))
            await client.stream(speech[0][:SAMPLE_RATE])
            client.ws.transport.abort()  # no close handshake
        client = await _connect(server)
        await client.configure(**manual_16k("asr"))
        await client.stream(speech[1])
        await client.send("input_audio_buffer.commit")
        final = (await client.until(FINAL))[-1]
        await client.ws.close()
        return final

    assert asyncio.run(run())["transcript"]
    for _ in range(100):
        if httpx.get(f"{server.url}/health").json()["sessions"] == 0:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert httpx.get(f"{server.url}/health").json()["sessions"] == 0


def test_a_rate_change_mid_session_keeps_the_timeline(server, speech):
    """16 kHz audio, then ``session.update`` to 24 kHz and the next utterance at that rate:
    the session goes on (no error, the VAD's stream continues), and the second utterance's
    times are in the same 16 kHz timeline (read as 16 kHz, 24 kHz audio would last 1.5x)."""

    def turns(rate: int) -> dict:
        audio = {
            "format": {"type": "audio/pcm", "rate": rate},
            "turn_detection": {"type": "server_vad"},
        }
        return {"type": "transcription", "audio": {"input": audio}}

    async def run():
        client = await _connect(server)
        await client.configure(**turns(16000))
        await client.stream(speech[0])
        first = await client.until(FINAL, timeout=120)
        await client.configure(**turns(24000))
        await client.stream(resample(speech[1], SAMPLE_RATE, 24000))
        second = await client.until(FINAL, timeout=120)
        await client.ws.close()
        return first + second

    seen = asyncio.run(run())
    assert not [e for e in seen if e["type"] == "error"]
    started = [
        e["audio_start_ms"] for e in seen if e["type"] == "input_audio_buffer.speech_started"
    ]
    stopped = [e["audio_end_ms"] for e in seen if e["type"] == "input_audio_buffer.speech_stopped"]
    assert len(started) == len(stopped) == len([e for e in seen if e["type"] == FINAL]) == 2
    first_ms, total_ms = (
        len(speech[0]) * 1000 // SAMPLE_RATE,
        sum(map(len, speech)) * 1000 // SAMPLE_RATE,
    )
    assert stopped[0] < first_ms <= started[1] < stopped[1] <= total_ms
