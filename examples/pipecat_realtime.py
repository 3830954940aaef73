"""A Pipecat voice bot whose speech-to-speech model is `mooer serve`.

    pip install 'pipecat-ai==1.14.0'
    mooer serve &                # the demo model on 127.0.0.1:8000
    python examples/pipecat_realtime.py examples/audio/en_chat.wav --out bot.wav

Pipecat's `OpenAIRealtimeLLMService` speaks to mooer's `/v1/realtime` as to OpenAI's: only
`base_url` changes. The bot speaks first (`LLMRunFrame`); then the recording is fed to the
pipeline as a microphone would feed it (mooer's VAD finds the turn) and the bot answers it. Both
replies are printed and their speech written to `--out`. A real bot puts a transport (Daily,
WebRTC, local audio) where this script reads and writes files.
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np
import soundfile as sf
import soxr
from pipecat.frames.frames import InputAudioRawFrame, LLMRunFrame, TTSAudioRawFrame, TTSStoppedFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.workers.runner import WorkerRunner

RATE = 16000  # what the pipeline sends (mooer resamples whatever it gets)


class Speaker(FrameProcessor):
    """Keeps the bot's speech (24 kHz PCM16) and counts the replies it finished."""

    def __init__(self) -> None:
        super().__init__()
        self.audio = bytearray()
        self.replies = asyncio.Queue()

    async def process_frame(self, frame, direction) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self.audio += frame.audio
        elif isinstance(frame, TTSStoppedFrame):
            self.replies.put_nowait(len(self.audio))
        await self.push_frame(frame, direction)


async def main(path: str, server: str, out: str) -> None:
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    speech = soxr.resample(samples.mean(axis=1), rate, RATE)
    speech = np.concatenate([speech, np.zeros(RATE, np.float32)])  # a pause ends the turn
    pcm = (np.clip(speech, -1, 1) * 32767).astype("<i2").tobytes()

    ws_url = server.replace("http", "ws", 1).rstrip("/") + "/v1/realtime"
    settings = OpenAIRealtimeLLMService.Settings(system_instruction="You are a helpful assistant.")
    llm = OpenAIRealtimeLLMService(api_key="unused", base_url=ws_url, settings=settings)
    context = LLMContext()
    aggregators = LLMContextAggregatorPair(context)
    speaker = Speaker()
    task = PipelineWorker(Pipeline([aggregators.user(), llm, speaker, aggregators.assistant()]))
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(task)
    running = asyncio.create_task(runner.run())

    await task.queue_frames([LLMRunFrame()])  # the bot speaks first
    await asyncio.wait_for(speaker.replies.get(), 60)
    step = RATE // 10 * 2  # 100 ms
    for i in range(0, len(pcm), step):
        await task.queue_frame(InputAudioRawFrame(pcm[i : i + step], RATE, 1))
        await asyncio.sleep(0.1)  # at the pace of speech
    await asyncio.wait_for(speaker.replies.get(), 60)
    await asyncio.sleep(0.5)  # the assistant aggregator takes the reply into the context
    await task.cancel()
    await running

    for message in context.get_messages():
        if isinstance(message, dict):
            print(f"{message['role']:>9}: {message['content']}")
    sf.write(out, np.frombuffer(bytes(speaker.audio), "<i2"), 24000)
    print(f"the bot's speech: {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("wav", help="what the user says (any rate, mono or stereo)")
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--out", default="bot.wav", help="the bot's speech, 24 kHz")
    args = parser.parse_args()
    asyncio.run(main(args.wav, args.server, args.out))
