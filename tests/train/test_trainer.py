from __future__ import annotations

import json
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from mooer.asr.frontend import Frontend
from mooer.audio import SAMPLE_RATE
from mooer.cli import main
from mooer.errors import CheckpointError, ConfigError
from mooer.llm.decoding import STREAMING
from mooer.llm.fabricate import write_tiny_llm
from mooer.model import load_model
from mooer.train.config import config_from_dict
from mooer.train.data import SpeechDataset, make_loader
from mooer.train.export import export_model
from mooer.train.objective import build_objective, training_prompt
from mooer.train.tokenizer import train_tokenizer
from mooer.train.trainer import LOG_FILE, Trainer, autocast, lr_factor, seed_everything

# Three "words", each a tone chord the tiny model can tell apart, each with a fixed answer.
PHRASES = {"red": (300,), "green light": (500, 1250), "blue sky": (800, 1900, 2700)}
TINY_ENCODER = {"output_size": 32, "attention_heads": 4, "linear_units": 64, "num_blocks": 2}


def _tone(freqs: tuple[int, ...], seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in freqs) / len(freqs)
    return (rng.uniform(0.2, 0.5) * wave + 0.005 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """12 utterances (4 per phrase), a tokenizer trained on the phrases and a tiny Qwen2."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(4):
        for text, freqs in PHRASES.items():
            name = f"{text.split()[0]}{i}"
            sf.write(root / f"{name}.wav", _tone(freqs, rng.uniform(0.5, 0.9), rng), SAMPLE_RATE)
            lines.append(json.dumps({"id": name, "audio": f"{name}.wav", "text": text}))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    tokenizer = train_tokenizer(PHRASES, root / "tokenizer", vocab_size=300)
    # Until mooer.train.tokenizer writes it: a Qwen2Tokenizer otherwise defaults unk to the pad.
    config = tokenizer / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "unk_token": None}))
    llm = write_tiny_llm(root / "llm", hidden_size=32, tokenizer_dir=tokenizer, seed=0)
    return {"manifest": root / "train.jsonl", "llm": llm, "root": root}


def _raw_config(corpus, out: Path, device: torch.device, **optim) -> dict:
    return {
        "output_dir": str(out),
        "device": str(device),
        "log_interval": 1,
        "data": {
            "train": [str(corpus["manifest"])],
            "max_frames_in_batch": 400,
            "num_workers": 0,
        },
        "model": {
            "encoder": TINY_ENCODER,
            "llm": str(corpus["llm"]),
            "adapter_hidden": 64,
            "full_llm": True,
        },
        "optim": {"lr": 5e-3, "warmup_steps": 5, "max_steps": 60, "weight_decay": 0.0, **optim},
    }


def _losses(out: Path) -> dict[int, float]:
    lines = (out / LOG_FILE).read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def test_lr_warms_up_then_decays():
    optim = config_from_dict(
        {"data": {"train": "x"}, "model": {"encoder": {}, "llm": "x"}, "optim": {"max_steps": 110}}
    ).optim
    optim = replace(optim, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, optim) == pytest.approx(0.1)
    assert lr_factor(9, optim) == pytest.approx(1.0)
    assert lr_factor(60, optim) == pytest.approx(0.55)  # half way down the cosine
    assert lr_factor(110, optim) == pytest.approx(0.1)
    assert lr_factor(60, replace(optim, schedule="linear")) == pytest.approx(0.55)
    assert lr_factor(500, replace(optim, schedule="constant")) == 1.0


def test_training_smoke_loss_falls_and_the_export_loads_and_decodes(corpus, tmp_path, device):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_raw_config(corpus, tmp_path / "run", device)))
    overrides = [f"data.valid=[{corpus['manifest']}]", "data.cache_encoder=true"]
    assert main(["train", str(path), *(arg for o in overrides for arg in ("--set", o))]) == 0

    losses = _losses(tmp_path / "run")
    assert len(losses) == 60
    log = [json.loads(line) for line in (tmp_path / "run" / LOG_FILE).read_text().splitlines()]
    assert log[-1]["valid_acc"] > 0.9  # the validation pass (features, not the cache) agrees
    assert np.mean([losses[s] for s in range(56, 61)]) < 0.2 * np.mean([losses[s] for s in (1, 2)])
    final = tmp_path / "run" / "final"
    assert sorted(p.name for p in final.iterdir()) == [
        "adapter_project.pt",
        "am.mvn",
        "llm",
        "mooer.json",
        "paraformer-encoder.pth",
    ]  # fmt: skip  (the whole LLM was trained: no lora/)
    model = load_model(final, device=str(device))
    waves, texts = [], []
    for line in corpus["manifest"].read_text().splitlines()[:6]:
        item = json.loads(line)
        waves.append(sf.read(corpus["root"] / item["audio"], dtype="float32")[0])
        texts.append(item["text"])
    decoded = model.generate(waves, [training_prompt("asr")] * len(waves), STREAMING)
    assert decoded == texts


@pytest.mark.parametrize("cache_encoder", [False, True])
def test_text_chat_lines_train_beside_speech(corpus, tmp_path, device, cache_encoder):
    """chat_text lines (no audio) in an ordinary manifest: CMVN, batches, the encoder cache."""
    manifest = tmp_path / "mixed.jsonl"
    text = [{"task": "chat_text", "text": f"say {w}", "target": w} for w in ("red", "blue sky")]
    spoken = [json.loads(line) for line in corpus["manifest"].read_text().splitlines()[:3]]
    spoken = [{**u, "audio": str(corpus["root"] / u["audio"])} for u in spoken]
    lines = [json.dumps(u) for u in spoken + text]
    manifest.write_text("\n".join(lines) + "\n")
    raw = _raw_config(corpus, tmp_path / "run", device, max_steps=4, warmup_steps=1)
    raw["data"].update(train=[str(manifest)], cache_encoder=cache_encoder, max_frames_in_batch=80)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path)]) == 0
    assert all(np.isfinite(v) for v in _losses(tmp_path / "run").values())


def _session(raw: dict, out: Path, stop_after: int | None = None) -> Trainer:
    """Build, resume and fit the model ``raw`` describes; the stream ends at ``stop_after``."""
    cfg = config_from_dict({**raw, "output_dir": str(out)})
    device = torch.device(cfg.device)
    seed_everything(cfg.optim.seed)
    objective = build_objective(cfg, device)
    trainer = Trainer(objective, cfg, device)
    trainer.resume()
    frontend = Frontend(objective.cmvn)

    def stream(start: int):
        dataset = SpeechDataset(cfg.data.train, frontend, cfg.data, seed=0, start_batch=start)
        batches = make_loader(dataset, 0)
        return batches if stop_after is None else islice(batches, stop_after - start)

    trainer.fit(stream)
    return trainer


def test_resume_continues_the_same_trajectory(corpus, tmp_path, device):
    """LoRA (with dropout) + frozen encoder; 6 unbroken steps vs 3 steps, restart, 3 more."""
    raw = _raw_config(corpus, tmp_path / "x", device, max_steps=6, warmup_steps=2)
    raw["model"].update(full_llm=False, lora_r=4)
    raw.update(save_interval=100)
    unbroken = _session(raw, tmp_path / "a")
    _session(raw, tmp_path / "b", stop_after=3)  # an interrupted run: saves at step 3
    resumed = _session(raw, tmp_path / "b")
    assert resumed.state.step == 6 and resumed.state.batches == 6
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    exact = device.type == "cpu"  # elsewhere the base is bf16 and autocast is on
    steps = (4, 5, 6)
    assert [b[s] for s in steps] == pytest.approx(
        [a[s] for s in steps], rel=1e-6 if exact else 1e-4
    )
    for (name, p), q in zip(
        unbroken.model.named_parameters(), resumed.model.parameters(), strict=True
    ):
        assert torch.allclose(p, q, atol=1e-6 if exact else 1e-4), name

    # Checkpoints hold the trainable parameters only: LoRA and adapter, not the frozen parts.
    saved = torch.load(resumed.latest_checkpoint(), weights_only=False)["model"]
    assert saved and all("lora_" in k or k.startswith("adapter.") for k in saved)
    trainable = [p for p in resumed.model.parameters() if p.requires_grad]
    in_optimizer = [p for g in resumed.optimizer.param_groups for p in g["params"]]
    assert len(in_optimizer) == len(trainable) == len(saved)

    # The LoRA layout exports and loads with the released loader (merged into the base).
    final = export_model(resumed.model, tmp_path / "final")
    assert (final / "lora" / "adapter_config.json").exists()
    _assert_export_answers_alike(resumed.model, final, corpus, device)


def _assert_export_answers_alike(trained, final: Path, corpus, device) -> None:
    """The exported model, loaded as released models are, embeds and predicts as ``trained``."""
    exact = device.type == "cpu"  # elsewhere the base is bf16 and autocast is on
    loaded = load_model(final, device=str(device))
    wave = sf.read(corpus["root"] / "red0.wav", dtype="float32")[0]
    trained = trained.eval()
    with torch.no_grad(), autocast(device, not exact):
        embeds, _ = loaded.embed([wave])
        feats = Frontend(trained.cmvn)(wave)[None].to(device)  # (1, T, 560)
        lengths = torch.tensor([feats.shape[1]], device=device)
        expected, _ = trained.adapter(*trained.encoder(feats, lengths))
        assert torch.allclose(embeds.float(), expected.float(), atol=1e-5 if exact else 0.05)
        merged = loaded.llm(inputs_embeds=embeds).logits.float()
        logits = trained.llm(inputs_embeds=expected.to(embeds.dtype)).logits.float()
    if exact:
        assert torch.allclose(merged, logits, atol=1e-4)
    else:  # LoRA merged into a bf16 base rounds each weight: compare the predictions
        assert (merged - logits).abs().mean() < 0.05
        assert (merged.argmax(-1) == logits.argmax(-1)).float().mean() > 0.9


def test_a_checkpoint_from_another_config_is_refused(corpus, tmp_path, device):
    cfg = config_from_dict(_raw_config(corpus, tmp_path, device, max_steps=1, warmup_steps=0))
    objective = build_objective(cfg, device)
    trainer = Trainer(objective, cfg, device)
    path = trainer.save()
    other = config_from_dict(
        {**_raw_config(corpus, tmp_path, device, max_steps=1), "model": {
            **_raw_config(corpus, tmp_path, device)["model"], "full_llm": False, "lora_r": 2,
        }}
    )  # fmt: skip
    stranger = Trainer(build_objective(other, device), other, device)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        stranger.resume(path)


def test_deepspeed_without_the_package_is_a_config_error(corpus, tmp_path, device):
    pytest.importorskip("torch")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("deepspeed is installed")
    cfg = config_from_dict(
        {**_raw_config(corpus, tmp_path, device), "deepspeed": {"zero_optimization": {}}}
    )
    with pytest.raises(ConfigError, match="deepspeed: .*pip install deepspeed"):
        Trainer(build_objective(cfg, device), cfg, device)


@pytest.mark.filterwarnings("ignore:deepspeed.*ignoring the settings mooer makes")
@pytest.mark.parametrize("full_llm", [True, False], ids=["full", "lora"])
def test_deepspeed_zero2_follows_the_plain_loop_resumes_and_exports(
    corpus, tmp_path, device, monkeypatch, release_zero2, full_llm
):
    """ZeRO-2 in one process, no launcher, configured by a file like the release's, training
    the whole LLM or LoRA (as the release did; on a GPU its frozen base is bf16): on DeepSpeed's
    CPU accelerator, or on the GPU of ``MOOER_TEST_DEVICE`` (there under bf16 autocast, like the
    plain loop).

    The engine owns accumulation (a short last update included), clipping, the optimizer and
    scheduler steps; mooer repeats none of them, so the trajectory is the plain loop's. Its
    checkpoints hold the trainable parameters only, resume exactly, and the model exports.
    """
    monkeypatch.setenv("DS_ACCELERATOR", device.type)  # read when deepspeed first picks one
    monkeypatch.setenv("LOCAL_RANK", "0")  # the trainer's default, undone after the test
    pytest.importorskip("deepspeed")
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != device.type:
        pytest.skip("deepspeed was imported with another accelerator before this test")
    exact = device.type == "cpu"  # no autocast: fp32 throughout
    # 7 batches in updates of 2: the 4th update is short; clipping is on in every update
    raw = _raw_config(
        corpus, tmp_path, device, max_steps=4, warmup_steps=2, grad_accum=2, clip_norm=0.05
    )
    raw["data"]["max_frames_in_batch"] = 150
    raw["model"].update(full_llm=full_llm, lora_r=4)
    raw.update(save_interval=2)
    deep = {**raw, "deepspeed": str(release_zero2)}  # overlap_comm, buckets, ...
    # The trainer makes a group of one on first use; it stays for the process's life, since
    # DeepSpeed keeps its own groups made from it (a new one would not be theirs).
    plain = _session(raw, tmp_path / "plain", stop_after=7)
    unbroken = _session(deep, tmp_path / "a", stop_after=7)
    _session(deep, tmp_path / "b", stop_after=4)  # interrupted after 2 updates
    resumed = _session(deep, tmp_path / "b", stop_after=7)
    assert dist.is_initialized() and dist.get_world_size() == 1
    engine = unbroken.engine
    assert unbroken.state.step == engine.global_steps == unbroken.scheduler.last_epoch == 4
    assert unbroken.state.batches == 7 and engine.gradient_clipping() == 0.05
    assert engine.zero_optimization_stage() == 2 and engine.zero_overlap_comm()  # the file's
    p, a, b = _losses(tmp_path / "plain"), _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert list(a) == [1, 2, 3, 4] and a[4] < 0.8 * a[1]
    assert a == pytest.approx(p, rel=1e-4 if exact else 1e-3)
    assert b == pytest.approx(a, rel=1e-6 if exact else 1e-3)
    for (name, x), y, z in zip(
        plain.model.named_parameters(), unbroken.model.parameters(), resumed.model.parameters()
    ):
        x, y, z = x.float(), y.float(), z.float()
        assert torch.allclose(x, y, atol=1e-3 if exact else 5e-3), name
        assert torch.allclose(y, z, atol=1e-6 if exact else 1e-3), name

    checkpoints = tmp_path / "b" / "checkpoints"
    assert {"step_00000002", "step_00000004.pt"} <= {f.name for f in checkpoints.iterdir()}
    saved = torch.load(
        checkpoints / "step_00000004" / "mp_rank_00_model_states.pt", weights_only=False
    )
    trainable = {n for n, q in resumed.model.named_parameters() if q.requires_grad}
    assert trainable <= saved["module"].keys()  # the frozen encoder is left out
    assert not any(name.startswith("encoder.") for name in saved["module"])

    final = export_model(resumed.model, tmp_path / "final")
    assert (final / "lora").is_dir() != full_llm
    _assert_export_answers_alike(resumed.model, final, corpus, device)


def test_ctc_stage_trains_the_encoder_and_export_drops_the_head(corpus, tmp_path, device):
    raw = _raw_config(corpus, tmp_path / "ctc", device, max_steps=40, lr=1e-2)
    raw["model"] = {"encoder": TINY_ENCODER, "train_encoder": True, "ctc_weight": 1.0}
    cfg = config_from_dict(raw)
    seed_everything(0)
    objective = build_objective(cfg, device)
    assert objective.llm is None and objective.adapter is None
    trainer = Trainer(objective, cfg, device)
    frontend = Frontend(objective.cmvn)
    trainer.fit(lambda start: make_loader(SpeechDataset(cfg.data.train, frontend, cfg.data), 0))
    losses = _losses(tmp_path / "ctc")
    assert losses[40] < 0.3 * losses[1]
    batch = next(iter(SpeechDataset(cfg.data.train, frontend, cfg.data, train=False)))
    batch = batch.to(device)
    objective.eval()
    hits = sum(h == t for h, t in zip(objective.ctc_transcribe(batch), batch.texts))
    assert hits >= len(batch) // 2

    final = export_model(objective, tmp_path / "encoder", cfg)
    assert sorted(p.name for p in final.iterdir()) == [
        "am.mvn", "mooer.json", "paraformer-encoder.pth",
    ]  # fmt: skip
    state = torch.load(final / "paraformer-encoder.pth", weights_only=True)
    assert not any("ctc" in k for k in state)
    assert state.keys() == objective.encoder.state_dict().keys()
    # the next stage starts from it
    raw["model"] = {"encoder_init": str(final / "paraformer-encoder.pth"), "cmvn": str(final / "am.mvn"),
                    "llm": str(corpus["llm"]), "adapter_hidden": 64}  # fmt: skip
    staged = build_objective(config_from_dict(raw), device)
    for name, tensor in staged.encoder.state_dict().items():
        assert torch.equal(tensor.cpu(), state[name])
    assert not any(p.requires_grad for p in staged.encoder.parameters())


@pytest.mark.slow
def test_torchrun_ddp_on_two_cpu_processes(corpus, tmp_path):
    """``mooer train`` under torchrun: gloo DDP, data split by rank, rank 0 exports."""
    import os
    import subprocess
    import sys

    raw = _raw_config(
        corpus, tmp_path / "ddp", torch.device("cpu"), max_steps=4, warmup_steps=1, grad_accum=2
    )
    raw["model"].update(full_llm=False, lora_r=4)
    raw.update(threads=1)
    raw["data"]["max_frames_in_batch"] = 100  # several batches per rank
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", "29533", "-m", "mooer.cli", "train", str(path)]  # fmt: skip
    pythonpath = os.pathsep.join(
        filter(None, [str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH")])
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "ddp"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_00000004.pt", "step_00000004.rng0", "step_00000004.rng1",
    ]  # fmt: skip
    assert list(_losses(out)) == [1, 2, 3, 4]
    (answer,) = load_model(out / "final").generate(
        [np.zeros(SAMPLE_RATE, np.float32)], [training_prompt("asr")], STREAMING
    )  # the exported LoRA model loads and decodes
    assert isinstance(answer, str)


@pytest.mark.parametrize("full_llm", [False, True])
def test_a_training_step_runs_under_bf16_autocast(corpus, tmp_path, device, full_llm):
    """What ``optim.bf16`` runs on a GPU: encoder, adapter, the splice of audio into the prompt
    and the LLM (LoRA or full) under bf16 autocast, the CPU's unless ``MOOER_TEST_DEVICE`` names
    a GPU (the trainer keeps CPU runs in fp32); the loss stays float32 and close to the loss
    without autocast, every gradient finite."""
    raw = _raw_config(corpus, tmp_path, device)
    raw["model"].update(full_llm=full_llm, lora_r=4)
    cfg = config_from_dict(raw)
    seed_everything(0)
    objective = build_objective(cfg, device).eval()  # no dropout: comparable
    dataset = SpeechDataset(cfg.data.train, Frontend(objective.cmvn), cfg.data, seed=0)
    batch = next(iter(make_loader(dataset, 0))).to(device)
    reference, _ = objective(batch)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss, stats = objective(batch)
    loss.backward()
    assert loss.dtype == torch.float32 and 0 <= stats["acc"] <= 1
    assert loss.item() == pytest.approx(reference.item(), rel=0.05)
    assert loss.item() != reference.item()  # bf16 arithmetic did run
    trained = [(n, p) for n, p in objective.named_parameters() if p.requires_grad]
    assert trained and all(p.grad is not None and p.grad.isfinite().all() for _, p in trained)
