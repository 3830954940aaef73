"""Audio as the openai SDK's realtime clients put it on the wire, and as the server receives it;
speech for the demo model in a voice it never heard."""

from __future__ import annotations

import base64

import numpy as np

from mooer.audio import SAMPLE_RATE, resample
from mooer.server.pcm import WireDecoder, WireFormat, encode_pcm16

WIRE_RATE = 24000  # the Realtime APIs' PCM16 rate
CHUNK = 2 * 4800  # bytes per append: 200 ms at 24 kHz, as the API suggests


def say(text: str) -> np.ndarray:
    """``text`` spoken by espeak-ng's en-us+f4 (a held-out voice of the demo model), 16 kHz."""
    from mooer.speak import text_to_speech
    from mooer.tts.backend import EspeakBackend

    pcm, _ = text_to_speech(text, "en", "f4", EspeakBackend(rate=180, pitch=50), SAMPLE_RATE)
    return pcm.astype(np.float32) / 32768.0


def at_24k(wave: np.ndarray) -> bytes:
    """16 kHz float samples -> 24 kHz PCM16 bytes."""
    return encode_pcm16(resample(wave, SAMPLE_RATE, WIRE_RATE))


def as_received(pcm: bytes) -> np.ndarray:
    """The 16 kHz samples the server makes of 24 kHz PCM16 (what its VAD and model see)."""
    decoder = WireDecoder(WireFormat("pcm16", WIRE_RATE))
    return np.concatenate([decoder.decode(pcm), decoder.flush()])


def _chunks(pcm: bytes) -> list[str]:
    return [base64.b64encode(pcm[i : i + CHUNK]).decode() for i in range(0, len(pcm), CHUNK)]


async def send_realtime(conn, pcm: bytes) -> None:
    """``input_audio_buffer.append`` on a ``client.realtime.connect()`` connection."""
    for chunk in _chunks(pcm):
        await conn.input_audio_buffer.append(audio=chunk)


async def send_translation(conn, pcm: bytes) -> None:
    """``session.input_audio_buffer.append`` on a ``client.realtime.translations`` connection."""
    for chunk in _chunks(pcm):
        await conn.session.input_audio_buffer.append(audio=chunk)


async def closed_transcription(base_url: str, key: str, query: dict[str, str], pcm: bytes) -> list:
    """An asr transcription session by the openai SDK (``query`` on its URL): ``pcm`` (24 kHz),
    then ``session.close``; every event up to ``session.closed``, after every final."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key=key)
    events = []
    async with client.realtime.connect(model="mooer", extra_query=query) as conn:
        await conn.session.update(
            session={"type": "transcription", "mooer": {"task": "asr"}}  # type: ignore
        )
        await send_realtime(conn, pcm)
        await conn.send({"type": "session.close"})
        async for event in conn:
            events.append(event)
            if event.type == "session.closed":
                break
    return events
