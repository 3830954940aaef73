from __future__ import annotations

import io
import json
import tarfile
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mooer.asr.frontend import Cmvn, Frontend, num_frames
from mooer.audio import SAMPLE_RATE
from mooer.errors import ConfigError
from mooer.train.config import DataConfig
from mooer.train.data import (
    SpeechDataset,
    estimate_cmvn,
    make_loader,
    read_audio,
    read_manifest,
    shuffle_buffer,
)

GOOD = {f"u{i}": 0.4 + 0.25 * i for i in range(8)}  # id -> seconds
FRONTEND = Frontend(Cmvn.identity())


def _wav_bytes(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    samples = (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)
    sf.write(buffer, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """8 good utterances, 2 bad files, 2 outside the 0.2..3 s limits."""
    root = tmp_path_factory.mktemp("data")
    (root / "wav").mkdir()
    lines = []
    for i, (uid, seconds) in enumerate(GOOD.items()):
        (root / "wav" / f"{uid}.wav").write_bytes(_wav_bytes(seconds, i))
        lines.append({"id": uid, "audio": f"wav/{uid}.wav", "text": f"text {uid}"})
    (root / "wav" / "corrupt.wav").write_bytes(b"RIFF not really a wav file")
    (root / "wav" / "short.wav").write_bytes(_wav_bytes(0.1, 50))
    (root / "wav" / "long.wav").write_bytes(_wav_bytes(3.5, 51))
    lines += [
        {"id": "missing", "audio": "wav/missing.wav", "text": "x"},
        {"id": "corrupt", "audio": "wav/corrupt.wav", "text": "x"},
        {"id": "short", "audio": "wav/short.wav", "text": "x"},  # caught after reading
        {"id": "long", "audio": "wav/long.wav", "text": "x", "duration": 3.5},  # before reading
    ]
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _cfg(**kw) -> DataConfig:
    return DataConfig(train=["x"], max_duration=3.0, max_frames_in_batch=60, num_workers=0, **kw)


def test_one_pass_reads_each_good_utterance_once_and_counts_the_rest(manifest):
    batches = list(SpeechDataset([manifest], FRONTEND, _cfg(), train=False))
    ids = [uid for b in batches for uid in b.ids]
    assert sorted(ids) == sorted(GOOD)
    assert sum(b.skipped for b in batches) == 2  # missing + corrupt, no crash
    assert sum(b.filtered for b in batches) == 2  # too short + too long
    for b in batches:
        frames = [num_frames(round(GOOD[uid] * SAMPLE_RATE)) for uid in b.ids]
        assert b.feat_lengths.tolist() == frames
        assert b.feats.shape == (len(b), max(frames), 560)
        assert max(frames) * len(b) <= 60 or len(b) == 1  # the frame budget, padding included
        assert b.targets == [f"text {uid}" for uid in b.ids]  # asr: the target is the text
        assert b.audio_seconds == pytest.approx(sum(GOOD[uid] for uid in b.ids), abs=1e-3)
    assert len(batches) > 2


def test_training_stream_repeats_with_a_new_order_each_epoch(manifest):
    dataset = SpeechDataset([manifest], FRONTEND, _cfg(), seed=3)
    epochs: dict[int, list[str]] = {}
    for batch in dataset:
        if batch.epoch == 3:
            break
        epochs.setdefault(batch.epoch, []).extend(batch.ids)
    assert all(sorted(ids) == sorted(GOOD) for ids in epochs.values())
    assert len({tuple(ids) for ids in epochs.values()}) == 3
    again = SpeechDataset([manifest], FRONTEND, _cfg(), seed=3)
    assert [b.ids for b in islice(again, 4)] == [b.ids for b in islice(iter(dataset), 4)]


def test_workers_share_out_the_data_and_a_resumed_stream_skips_exactly(manifest):
    def stream(start: int) -> list:
        dataset = SpeechDataset([manifest], FRONTEND, _cfg(), seed=1, start_batch=start)
        return list(islice(make_loader(dataset, num_workers=2), 7))

    full = stream(0)
    first_epoch = [uid for b in full if b.epoch == 0 for uid in b.ids]
    assert sorted(first_epoch) == sorted(GOOD)  # two workers, each utterance once
    resumed = stream(3)
    assert [b.ids for b in resumed[:4]] == [b.ids for b in full[3:]]
    assert torch.equal(resumed[0].feats, full[3].feats)


def test_task_filter_and_derived_targets(tmp_path):
    (tmp_path / "a.wav").write_bytes(_wav_bytes(0.5, 0))
    rows = [
        {"audio": "a.wav", "task": "mtl", "text": "今天", "translation": "today"},
        {"audio": "a.wav", "task": "ast", "text": "今天", "translation": "today"},
        {"audio": "a.wav", "task": "chat", "text": "q", "target": "a", "history": [["x", "y"]]},
        # the assistant spoke first: a greeting with no question before it
        {"audio": "a.wav", "task": "chat", "text": "q", "target": "a", "history": [[None, "hi"]]},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    entries = read_manifest(path)
    assert [e.target for e in entries] == ["今天\ntoday", "today", "a", "a"]
    assert entries[2].history == [("x", "y")] and entries[0].id == "a"
    assert entries[3].history == [(None, "hi")]
    batches = list(SpeechDataset([path], FRONTEND, _cfg(tasks=["chat"]), train=False))
    assert [t for b in batches for t in b.tasks] == ["chat", "chat"]


def test_text_chat_lines_have_no_audio_and_ride_in_batches_with_empty_rows(tmp_path):
    (tmp_path / "a.wav").write_bytes(_wav_bytes(0.5, 0))
    rows = [
        {"audio": "a.wav", "task": "chat", "text": "q", "target": "a"},
        {"task": "chat_text", "text": "what is one plus one", "target": "two"},
        {"task": "opening", "target": "hello"},
        # told to greet, after a context sent as one user message (not answered)
        {"task": "opening", "text": "Greet.", "target": "hi", "history": [["context", None]]},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    spoken, text, opening, told = read_manifest(path)
    assert (told.text, told.history) == ("Greet.", [("context", None)])
    assert (text.id, text.audio, text.target) == (f"{path}:2", "", "two")
    assert (opening.audio, opening.text, opening.target) == ("", "", "hello")
    wide = DataConfig(train=["x"], max_frames_in_batch=200, num_workers=0)  # all in one batch
    (batch,) = SpeechDataset([path], FRONTEND, wide, train=False)
    alone, alone_lengths = FRONTEND.batch([read_audio(spoken)])
    assert batch.tasks == ["chat", "chat_text", "opening", "opening"]
    assert batch.feat_lengths.tolist() == [alone_lengths.item(), 0, 0, 0]
    assert torch.equal(batch.feats[0], alone[0]) and not batch.feats[1:].any()
    (only_text,) = SpeechDataset([path], FRONTEND, _cfg(tasks=["chat_text"]), train=False)
    assert only_text.feats.shape == (1, 0, 560) and only_text.feat_lengths.tolist() == [0]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"task": "chat_text", "audio": "a.wav", "text": "q", "target": "a"}', "no 'audio'"),
        ('{"task": "chat_text", "target": "a"}', "m.jsonl:2: a chat_text item has a 'text'"),
        ('{"task": "opening", "audio": "a.wav", "target": "a"}', "m.jsonl:2: an opening item"),
        ('{"task": "opening"}', "m.jsonl:2: task 'opening' needs a non-empty 'target'"),
        ("{not json", "m.jsonl:2: not valid JSON"),
        ('{"text": "no audio"}', "m.jsonl:2: missing field 'audio'"),
        ('{"audio": "a.wav", "task": "tts"}', "m.jsonl:2: task 'tts' is not one of"),
        ('{"audio": "a.wav", "task": "chat", "text": "q"}', "m.jsonl:2: task 'chat' needs"),
        ('{"audio": "a.wav", "history": "hi"}', "m.jsonl:2: 'history' must be"),
        ('{"audio": "a.wav", "history": [[null, null]]}', "m.jsonl:2: 'history' must be"),
        ('{"audio": "a.wav", "history": [["q", 4]]}', "m.jsonl:2: 'history' must be"),
        ('{"audio": "a.wav", "start": "0"}', "m.jsonl:2: start='0': expected a number$"),
    ],
)
def test_malformed_manifest_lines_are_named(tmp_path, line, message):
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "a.wav"}\n' + line + "\n")
    with pytest.raises(ConfigError, match=message):
        read_manifest(path)


def test_segments_of_a_long_file(tmp_path):
    (tmp_path / "long.wav").write_bytes(_wav_bytes(2.0, 0))
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"audio": "long.wav", "start": 0.5, "end": 1.25}) + "\n")
    (entry,) = read_manifest(path)
    assert len(read_audio(entry)) == int(0.75 * SAMPLE_RATE)


def test_wenet_tar_shards(tmp_path):
    members = {
        "s/a.wav": _wav_bytes(0.6, 1),
        "s/a.txt": b"hello world\n",
        "s/b.wav": _wav_bytes(0.7, 2),
        "s/b.txt": b"second",
        "s/b.json": json.dumps({"task": "chat", "target": "an answer"}).encode(),
        "s/c.wav": b"corrupt audio bytes",
        "s/c.txt": b"bad",
        "s/d.txt": b"no audio at all",
    }
    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards" / "0.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "shards.list").write_text("shards/0.tar\n")
    dataset = SpeechDataset([tmp_path / "shards.list"], FRONTEND, _cfg(), train=False)
    batches = list(dataset)
    got = {uid: (t, target) for b in batches for uid, t, target in zip(b.ids, b.tasks, b.targets)}
    assert got == {"a": ("asr", "hello world"), "b": ("chat", "an answer")}
    assert sum(b.skipped for b in batches) == 1  # the corrupt wav; d never had audio


def test_shuffle_buffer_is_a_permutation():
    rng = np.random.default_rng(0)
    out = list(shuffle_buffer(range(100), 10, rng))
    assert sorted(out) == list(range(100)) and out != list(range(100))
    # a window of 10 cannot move an item more than 10 places earlier
    assert all(out.index(i) >= i - 10 for i in range(100))


def test_estimated_cmvn_normalises_the_data(manifest):
    cmvn = estimate_cmvn([manifest], max_utts=20)
    cfg = DataConfig(train=["x"], max_frames_in_batch=60)  # default limits, as the estimate's
    batches = SpeechDataset([manifest], Frontend(cmvn), cfg, train=False)
    feats = torch.cat([b.feats[i, :n] for b in batches for i, n in enumerate(b.feat_lengths)])
    assert feats.mean(0).abs().max() < 1e-3  # (N, 560) -> (560,)
    assert (feats.std(0) - 1).abs().max() < 1e-2


def test_cached_encoder_outputs_are_rebatched_each_epoch(manifest):
    from mooer.asr.encoder import EncoderConfig, SANMEncoder
    from mooer.train.data import EncodedDataset, encode_corpus

    torch.manual_seed(0)
    encoder = SANMEncoder(EncoderConfig(output_size=16, linear_units=32, num_blocks=1)).eval()
    cfg = _cfg()
    with torch.no_grad():
        utts = encode_corpus(
            SpeechDataset([manifest], FRONTEND, cfg, train=False),
            lambda b: encoder(b.feats, b.feat_lengths),
        )
    assert sorted(u.entry.id for u in utts) == sorted(GOOD)
    dataset = EncodedDataset(utts, cfg, seed=2)
    batches = list(islice(dataset, 12))
    assert sorted(uid for b in batches if b.epoch == 0 for uid in b.ids) == sorted(GOOD)
    batch = batches[0]
    assert batch.feats is None and batch.encoder_out.shape[:2] == (
        len(batch),
        max(batch.encoder_lengths),
    )
    # the cache holds what the encoder gives for each utterance alone (fp16)
    (uid, *_), n = batch.ids, int(batch.encoder_lengths[0])
    (alone,) = [b for b in SpeechDataset([manifest], FRONTEND, cfg, train=False) if uid in b.ids]
    i = alone.ids.index(uid)
    with torch.no_grad():
        expected = encoder(alone.feats[i : i + 1, :n], alone.feat_lengths[i : i + 1])[0][0]
    assert torch.allclose(batch.encoder_out[0, :n], expected, atol=1e-2)
    resumed = list(islice(EncodedDataset(utts, cfg, seed=2, start_batch=5), 7))
    assert [b.ids for b in resumed] == [b.ids for b in batches[5:]]
