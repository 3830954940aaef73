"""The encoder batch across clients: a batched forward gives each request what it would get
alone; the bounds and the moment a batch runs; a bad request fails alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mooer.agent.encode_batch import EncodeBatch, EncodeBatchConfig
from mooer.audio import SAMPLE_RATE
from mooer.errors import AudioError, ConfigError


@pytest.fixture(scope="module")
def model(omni_model):
    return omni_model


def _waves(*seconds: float) -> list[np.ndarray]:
    rng = np.random.default_rng(len(seconds))
    return [rng.normal(0, 0.1, int(s * SAMPLE_RATE)).astype(np.float32) for s in seconds]


def test_batched_embeddings_equal_each_request_alone(model):
    batch = EncodeBatch(model, EncodeBatchConfig())
    requests = [_waves(1.3), _waves(0.4, 2.9), _waves(0.7)]
    futures = [batch.add(waves, step=0, waiting=0) for waves in requests]
    assert batch.run(batch.take()) == 4  # one forward of every waveform
    for waves, future in zip(requests, futures, strict=True):
        embeds, lengths = future.result()
        alone, alone_lengths = model.embed(waves)  # (P, Ta, H), (P,)
        assert torch.equal(lengths, alone_lengths)
        assert embeds.shape == alone.shape  # cut to the request's own longest
        for row, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(embeds[row, :n], alone[row, :n], rtol=1e-5, atol=1e-5)


def test_a_batch_runs_after_the_waiting_clients_steps_or_when_idle_or_full(model):
    batch = EncodeBatch(model, EncodeBatchConfig(max_items=3))
    assert not batch.due(step=0, idle=True)  # nothing asked
    batch.add(_waves(1.0), step=5, waiting=2)  # two clients will take a step first
    assert not batch.due(step=6, idle=False)
    assert batch.due(step=6, idle=True)  # no one else will add to it
    assert batch.due(step=7, idle=False)  # they had their steps
    batch.add(_waves(1.0, 1.0), step=6, waiting=1)  # joins: the batch keeps its moment
    assert batch.due(step=5, idle=False)  # full: 3 items


def test_take_keeps_to_the_bounds_and_skips_cancelled_requests(model):
    batch = EncodeBatch(model, EncodeBatchConfig(max_items=3, max_audio_s=4.0))
    first = batch.add(_waves(1.0, 1.0), 0, 0)
    dropped = batch.add(_waves(1.0), 0, 0)
    dropped.cancel()  # its job went away
    second = batch.add(_waves(1.0, 1.0), 0, 0)
    long = batch.add(_waves(5.0), 0, 0)  # beyond max_audio_s alone
    assert [a.future for a in batch.take()] == [first]  # 2 + 2 items > 3
    assert [a.future for a in batch.take()] == [second]  # 3 x 5 s of padding > 4 s
    assert [a.future for a in batch.take()] == [long]  # alone, whatever its length
    assert not batch.pending


def test_a_bad_request_fails_alone(model):
    batch = EncodeBatch(model, EncodeBatchConfig())
    good = batch.add(_waves(1.0), 0, 0)
    bad = batch.add([np.zeros((2, SAMPLE_RATE), dtype=np.float32)], 0, 0)
    batch.run(batch.take())
    assert good.result()[0].shape[0] == 1
    with pytest.raises(AudioError, match="shape"):
        bad.result()


def test_bounds_are_checked_by_name():
    with pytest.raises(ConfigError, match="encode_batch.max_items"):
        EncodeBatchConfig(max_items=0)
    with pytest.raises(ConfigError, match="encode_batch.max_audio_s"):
        EncodeBatchConfig(max_audio_s=float("nan"))
