"""Greedy decodes batched across live sessions, on the bundled demo model: each answer equals
the answer decoded alone (the token loop), whatever ends it; a bad request fails alone; the
partials of sessions queued at the same moment run as one batched decode."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
import torch

from mooer.agent import events as ev
from mooer.agent.decode_batch import DecodeBatch, DecodeBatchConfig
from mooer.agent.engine import Engine
from mooer.agent.session import SessionConfig
from mooer.asr.partial_context import PartialEmbeds
from mooer.audio import SAMPLE_RATE, load_audio, ms_to_samples
from mooer.errors import ConfigError
from mooer.llm.backend import one_by_one
from mooer.llm.decoding import STREAMING
from mooer.llm.generation import Generation, Row, greedy_together
from mooer.llm.prompts import build_prompt
from mooer.model import load_model
from mooer.tasks import decode
from tests.agent.recorder import Recorder

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "audio"
NAMES = ("zh_weather", "zh_translate", "en_chat", "en_directions")
CHUNK = SAMPLE_RATE // 50  # 20 ms


@pytest.fixture(scope="module")
def model():
    return load_model()  # the bundled demo model


@pytest.fixture(scope="module")
def prompts(model) -> list[torch.Tensor]:
    """The asr prompt after each example recording and after its first half: (1, L_b, H)."""
    waves = [load_audio(EXAMPLES / f"{name}.wav") for name in NAMES]
    waves += [wave[: wave.size // 2] for wave in waves]
    with torch.inference_mode():
        embeds, lengths = model.embed(waves)  # (B, Ta, H), (B,)
        return list(one_by_one(model, embeds, lengths, build_prompt("asr")))


def _alone(model, row: Row) -> str:
    generation = Generation(model.llm, model.tokenizer, row.inputs_embeds, row.options)
    for _ in generation:
        if row.should_stop is not None and row.should_stop():
            generation.stop()
    return generation.text


def _stop_after(tokens: int):
    """A ``should_stop`` that says stop at its ``tokens``-th question (a token each)."""
    asked = iter(range(1, 1_000))
    return lambda: next(asked) >= tokens


def test_each_answer_equals_its_decode_alone(model, prompts):
    short = dataclasses.replace(STREAMING, max_new_tokens=2)
    rows = [Row(p, STREAMING) for p in prompts]
    rows[1] = Row(prompts[1], short)  # ends at max_new_tokens while the others go on
    rows[3] = Row(prompts[3], STREAMING, _stop_after(2))  # ended by its should_stop
    together = greedy_together(model.llm, model.tokenizer, rows)
    alone = [
        _alone(model, dataclasses.replace(r, should_stop=_stop_after(2)) if i == 3 else r)
        for i, r in enumerate(rows)
    ]
    assert together == alone
    assert len(set(together)) >= 6  # real, different answers (prompts of different lengths)
    assert together[0] == "星期一会下雨"
    for cut, whole in (
        (together[1], "我想要一个蓝色的包"),
        (together[3], "the park is to the north"),
    ):
        assert cut and whole.startswith(cut) and cut != whole  # ended early, as alone


def test_a_sampled_row_is_refused():
    with pytest.raises(ConfigError, match="do_sample"):
        sampled = dataclasses.replace(STREAMING, do_sample=True)
        greedy_together(None, None, [Row(torch.zeros(1, 1, 4), sampled)])


def test_a_bad_request_fails_alone(model, prompts):
    batch = DecodeBatch(model, DecodeBatchConfig())
    good = [batch.add([Row(p, STREAMING)], 0, 0) for p in prompts[:2]]
    bad = batch.add([Row(prompts[2][:, :, :7], STREAMING)], 0, 0)  # not the LLM's width
    batch.run(batch.take())  # the batch fails: each request runs alone
    assert [f.result() for f in good] == ["星期一会下雨", "我想要一个蓝色的包"]
    with pytest.raises(RuntimeError):
        bad.result()


def test_bounds_are_checked_by_name():
    with pytest.raises(ConfigError, match="decode_batch.max_items"):
        DecodeBatchConfig(max_items=0)


def test_partials_of_sessions_run_as_one_batched_decode(model):
    """Three sessions' partials, queued while the worker is busy, are encoded in one forward and
    decoded in one batched token loop, each as its audio decoded alone."""
    engine = Engine(model, threads=1)
    interval = ms_to_samples(SessionConfig().partial_interval_ms)
    said = [(NAMES[0], 3 * interval), (NAMES[1], 4 * interval), (NAMES[2], 2 * interval)]
    manual = SessionConfig(turn_detection=False)
    recorders = [Recorder() for _ in said]
    sessions = [engine.open(manual, r) for r in recorders]
    held, release = threading.Event(), threading.Event()
    engine.submit(engine.open(manual), "control", lambda: held.set() or release.wait(30))
    try:
        assert held.wait(30)  # the worker is busy: each session's latest partial waits
        audios = [load_audio(EXAMPLES / f"{name}.wav") for name, _ in said]
        for session, audio, (_, end) in zip(sessions, audios, said, strict=True):
            for start in range(0, end + CHUNK, CHUNK):
                session.feed(audio[start : start + CHUNK])
        release.set()
        assert all(session.wait_idle(60) for session in sessions)
        assert engine.encode_batches() == [3]
        assert engine.decode_batches() == [3]  # one token loop for the three partials
        for session, recorder, audio, (_, end) in zip(
            sessions, recorders, audios, said, strict=True
        ):
            assert session.stats.partials == 1
            with torch.inference_mode():
                embeds = PartialEmbeds(manual.partial_context).embed(model.embed, audio[:end])
            lengths = torch.tensor([len(embeds)])
            alone = decode(model, embeds[None], lengths, "asr", STREAMING, step_by_step=True)
            assert recorder.of(ev.TranscriptDelta)[-1].text == alone[0].transcript
            assert alone[0].transcript  # the demo model heard something in each
    finally:
        release.set()
        engine.close(timeout=30)
