"""Pipecat's ``OpenAIRealtimeLLMService`` (pipecat-ai 1.14.0) against a real server over the
bundled demo model.

A pipeline as a Pipecat bot builds it, without a transport: the context aggregators around the
service, the bot speaking first (``LLMRunFrame``) from its instructions and a context with user
and assistant messages (it greets), then two spoken arithmetic turns (server VAD) answered with
audio after the greeting, the second only answerable from the first; no error frame on the way (Pipecat ends the session at
the first ``error`` event).
The frameworks live in their own environment (``scripts/setup.sh --tests`` makes it;
``test_frameworks.py`` runs this file there); elsewhere this skips.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mooer.audio import SAMPLE_RATE
from mooer.server.pcm import encode_pcm16
from mooer.train.corpus import OPENING
from tests.server.wire import say

pytest.importorskip(
    "pipecat.services.openai.realtime.llm",
    reason="pipecat-ai is not installed here (scripts/setup.sh --tests puts it in .venv-frameworks)",
)


# The second question is about the first's answer: only a memory of the first answers it.
TURNS = (("what is ten plus five", "fifteen"), ("and plus one", "sixteen"))
PAUSE = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)  # before a question
SILENCE = np.zeros(SAMPLE_RATE, dtype=np.float32)  # after it: the server's VAD ends the turn


def test_a_pipecat_realtime_bot_runs_its_standard_flows(demo_server):
    from pipecat.frames.frames import (
        ErrorFrame,
        InputAudioRawFrame,
        LLMFullResponseEndFrame,
        LLMRunFrame,
        TTSAudioRawFrame,
        TTSTextFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
    from pipecat.processors.frame_processor import FrameProcessor
    from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
    from pipecat.workers.runner import WorkerRunner

    class Seen(FrameProcessor):
        """Passes every frame on and keeps the ones a test asks about."""

        def __init__(self) -> None:
            super().__init__()
            self.frames: list = []
            self.replies = asyncio.Queue()

        async def process_frame(self, frame, direction) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, (ErrorFrame, TTSAudioRawFrame, TTSTextFrame)):
                self.frames.append(frame)
            if isinstance(frame, LLMFullResponseEndFrame):
                self.replies.put_nowait(len(self.frames))
            await self.push_frame(frame, direction)

    async def run():
        url = f"ws://{demo_server.host}:{demo_server.port}/v1/realtime"
        settings = OpenAIRealtimeLLMService.Settings(
            system_instruction="You are a helpful assistant."
        )
        llm = OpenAIRealtimeLLMService(api_key="unused", base_url=url, settings=settings)
        sent = []  # the client events it sends, by type
        send = llm.send_client_event

        async def record(event) -> None:
            sent.append(event.type)
            await send(event)

        llm.send_client_event = record
        context = LLMContext(
            [
                {"role": "user", "content": "what is two plus two"},
                {"role": "assistant", "content": "four"},
            ]
        )
        aggregators = LLMContextAggregatorPair(context)
        upstream, downstream = Seen(), Seen()
        pipeline = Pipeline(
            [upstream, aggregators.user(), llm, downstream, aggregators.assistant()]
        )
        task = PipelineWorker(pipeline)
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(task)
        running = asyncio.create_task(runner.run())
        await task.queue_frames([LLMRunFrame()])  # the bot speaks first
        ends = [await asyncio.wait_for(downstream.replies.get(), 60)]  # frames seen by then
        for question, _ in TURNS:
            pcm = encode_pcm16(np.concatenate([PAUSE, say(question), SILENCE]))
            for i in range(0, len(pcm), 3200):  # 100 ms, as a transport delivers it
                frame = InputAudioRawFrame(
                    audio=pcm[i : i + 3200], sample_rate=SAMPLE_RATE, num_channels=1
                )
                await task.queue_frame(frame)
            ends.append(await asyncio.wait_for(downstream.replies.get(), 60))
        await asyncio.sleep(0.3)
        await task.cancel()
        await asyncio.wait_for(running, 30)
        replies = [downstream.frames[a:b] for a, b in zip([0, *ends], ends)]
        return replies, downstream.frames + upstream.frames, context, sent

    replies, frames, context, sent = asyncio.run(run())
    assert [f for f in frames if isinstance(f, ErrorFrame)] == []
    said = ["".join(f.text for f in part if isinstance(f, TTSTextFrame)) for part in replies]
    for part, text in zip(replies, said):
        assert any(isinstance(f, TTSAudioRawFrame) for f in part) and text.strip()
    assert said[0].split() == OPENING.split(), said  # the bot greets when it speaks first
    assert [text.split() for text in said[1:]] == [[answer] for _, answer in TURNS], said
    # The opening was still "playing" (no transport reports its end) when the user spoke:
    # Pipecat truncated it, and the server took that without an error.
    assert "conversation.item.truncate" in sent
    messages = [m for m in context.get_messages() if isinstance(m, dict)]
    roles = [m["role"] for m in messages]
    assert roles == ["user", "assistant", "assistant"] + ["user", "assistant"] * len(TURNS)
    assert all(m["content"].strip() for m in messages)  # the transcripts and the replies
