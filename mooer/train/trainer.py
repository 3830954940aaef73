"""The training loop: any ``model.forward(batch) -> (loss, stats)`` trained by AdamW.

Linear warmup then cosine/linear decay, gradient accumulation, norm clipping, bf16 autocast on
cuda/musa, DDP under ``torchrun`` (WORLD_SIZE > 1), DeepSpeed ZeRO when configured and installed.
Only parameters with ``requires_grad`` reach the optimizer, and only they are checkpointed,
together with the optimizer, scheduler, step and RNG states, so a resumed run continues the same
trajectory: the data stream is deterministic and skips the batches already used.

``train_command`` is ``mooer train CONFIG``: config -> model -> data -> loop -> exported model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mooer.errors import CheckpointError, ConfigError
from mooer.train.config import OptimConfig, TrainConfig

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "train_log.jsonl"


@dataclass
class TrainState:
    step: int = 0  # optimizer updates done
    batches: int = 0  # batches this rank has taken from its data stream
    epoch: int = 0
    skipped: int = 0  # bad utterances skipped by the data pipeline
    filtered: int = 0  # utterances outside the length limits


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# The collective backend for each training device: CPU runs use gloo even where a GPU is present.
_BACKENDS = {"cuda": "nccl", "musa": "mccl"}


def init_distributed(device: torch.device) -> Distributed:
    """Join the ``torchrun`` process group when WORLD_SIZE > 1, with ``device``'s backend."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(_BACKENDS.get(device.type, "gloo"))
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, optim: OptimConfig) -> float:
    """The learning-rate multiplier for update ``step`` (0-based)."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    span = max(1, optim.max_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    if optim.schedule == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * progress))
    else:
        decay = 1 - progress
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * decay


def uses_bf16(device: torch.device, enabled: bool) -> bool:
    """Whether ``optim.bf16`` (``enabled``) means bf16 autocast here: on accelerators only."""
    return enabled and device.type != "cpu"


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on accelerators when ``enabled``; the CPU trains in fp32."""
    if not uses_bf16(device, enabled):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters the optimizer updates, by name (what a checkpoint needs to hold)."""
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: biases and norms are not decayed."""
    decay, plain = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else plain).append(param)
    if not decay and not plain:
        raise ConfigError("model: nothing to train (every parameter is frozen)")
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]


class _Meter:
    """Sums of the stats of the batches since the last log line."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.utts = 0
        self.audio_seconds = 0.0
        self.started = time.perf_counter()

    def add(self, stats: dict[str, float], utts: int, audio_seconds: float) -> None:
        self.utts += utts
        self.audio_seconds += audio_seconds
        tokens = stats.get("tokens", utts)
        for key, value in stats.items():
            if key == "tokens":
                continue
            weight = tokens if key in ("acc", "answer") else utts  # token-level stats by tokens
            self.sums[key] = self.sums.get(key, 0.0) + value * weight
            self.weights[key] = self.weights.get(key, 0.0) + weight

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / max(self.weights[k], 1e-9) for k in self.sums}

    def rates(self, world_size: int) -> dict[str, float]:
        seconds = max(time.perf_counter() - self.started, 1e-9)
        return {
            "utt/s": self.utts * world_size / seconds,
            "audio-s/s": self.audio_seconds * world_size / seconds,
        }


class Trainer:
    """Trains ``model`` (``forward(batch) -> (loss, stats)``) and checkpoints into ``out_dir``."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        device: torch.device,
        dist: Distributed | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.optim = cfg.optim
        self.device = device
        self.dist = dist or Distributed()
        self.out_dir = Path(cfg.output_dir)
        self.state = TrainState()
        self.optimizer = torch.optim.AdamW(
            _param_groups(model, self.optim.weight_decay),
            lr=self.optim.lr,
            betas=self.optim.betas,
            fused=device.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.optim)
        )
        self.engine = None  # DeepSpeed's, when configured
        self.wrapped: nn.Module = model
        if cfg.deepspeed is not None:
            self.engine = self._deepspeed_engine()
            self.wrapped = self.engine
        elif self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(model, device_ids=ids)

    # -- the loop ---------------------------------------------------------------------------

    def fit(
        self,
        batches: Callable[[int], Iterable[Any]],
        valid: Callable[[], Iterable[Any]] | None = None,
    ) -> TrainState:
        """Train until ``max_steps`` updates or ``max_epochs`` epochs.

        ``batches(start)`` gives this rank's stream from its ``start``-th batch (so a resumed run
        skips what it used); batches have ``to(device)``, ``len()``, ``audio_seconds`` and
        ``epoch``, and optionally ``skipped``/``filtered`` counts.
        """
        from tqdm import tqdm

        state = self.state
        stream = self._lookahead(iter(batches(state.batches)))
        bar = tqdm(
            total=self.optim.max_steps,
            initial=state.step,
            file=sys.stderr,
            disable=not self.dist.is_main,
            unit="step",
            dynamic_ncols=True,
        )
        meter = _Meter()
        self.model.train()
        finished = self._done()
        while not finished:
            took, ended = self._update(stream, meter)
            if took:
                state.step += 1
                bar.update(1)
            finished = ended or self._done()
            if finished or state.step % self.cfg.log_interval == 0:
                self._log(meter, bar)
                meter = _Meter()
            if valid is not None and (finished or state.step % self.cfg.valid_interval == 0):
                self._log_valid(self.evaluate(valid()))
            if finished or state.step % self.cfg.save_interval == 0:
                self.save()
        bar.close()
        return state

    def _done(self) -> bool:
        max_steps, max_epochs = self.optim.max_steps, self.optim.max_epochs
        return (max_steps is not None and self.state.step >= max_steps) or (
            max_epochs is not None and self.state.epoch >= max_epochs
        )

    def _update(self, stream: Iterator[tuple[Any, bool]], meter: _Meter) -> tuple[bool, bool]:
        """One optimizer update over ``grad_accum`` batches (fewer at the end) -> (stepped, ended).

        The update's last batch reduces gradients across ranks (DDP: ``no_sync`` before it) and
        is DeepSpeed's accumulation boundary, also when the stream ends before ``grad_accum``.
        """
        accum = self.optim.grad_accum
        took, last = 0, False
        for batch, last in itertools.islice(stream, accum):
            took += 1
            self.state.batches += 1
            self.state.epoch = max(self.state.epoch, batch.epoch)
            self.state.skipped += getattr(batch, "skipped", 0)
            self.state.filtered += getattr(batch, "filtered", 0)
            boundary = last or took == accum
            sync = contextlib.nullcontext()
            if self.engine is not None:
                self.engine.set_gradient_accumulation_boundary(boundary)
            elif not boundary and hasattr(self.wrapped, "no_sync"):
                sync = self.wrapped.no_sync()  # DDP: reduce gradients once per update
            with sync:
                loss, stats = self._forward(batch.to(self.device, non_blocking=True))
                if self.engine is not None:
                    self.engine.backward(loss)  # DeepSpeed divides by grad_accum itself
                else:
                    (loss / accum).backward()
            meter.add(stats, len(batch), batch.audio_seconds)
        if took:
            self._step(took)
        return took > 0, took == 0 or last

    def _lookahead(self, stream: Iterator[Any]) -> Iterator[tuple[Any, bool]]:
        """Each batch with whether the stream ends after it: ``_update`` must know its last."""
        batch = self._take(stream)
        while batch is not None:
            following = self._take(stream)
            yield batch, following is None
            batch = following

    def _take(self, stream: Iterator[Any]) -> Any:
        """The next batch; None when the stream ran out or reached epoch ``max_epochs``.

        Under DDP every rank agrees (an all-reduce of the flag).
        """
        batch = next(stream, None)
        ended = batch is None
        if batch is not None:
            ended = self.optim.max_epochs is not None and batch.epoch >= self.optim.max_epochs
            if ended:
                self.state.epoch = max(self.state.epoch, batch.epoch)  # every epoch is done
        if self.dist.world_size > 1:
            import torch.distributed as dist

            flag = torch.tensor([float(ended)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            ended = bool(flag.item())
        return None if ended else batch

    def _forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        with autocast(self.device, self.optim.bf16):
            return self.wrapped(batch)

    def _step(self, took: int) -> None:
        if self.engine is not None:
            # clipping, the optimizer and scheduler steps are DeepSpeed's; a short last update
            # stays the sum of its batches' gradients / grad_accum (not rescaled as below)
            self.engine.step()
            return
        if took < self.optim.grad_accum:  # a short last update: rescale to a mean over `took`
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.mul_(self.optim.grad_accum / took)
        if self.optim.clip_norm > 0:
            params = [p for p in self.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, self.optim.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Any]) -> dict[str, float]:
        """Mean stats over a validation pass, in eval mode."""
        self.model.eval()
        meter = _Meter()
        for batch in batches:
            with autocast(self.device, self.optim.bf16):
                _, stats = self.model(batch.to(self.device))
            meter.add(stats, len(batch), batch.audio_seconds)
        self.model.train()
        return meter.means()

    # -- logging ----------------------------------------------------------------------------

    def _log(self, meter: _Meter, bar: Any) -> None:
        if not meter.utts or not self.dist.is_main:
            return
        means = meter.means()
        rates = meter.rates(self.dist.world_size)
        lr = self.scheduler.get_last_lr()[0]
        shown = {k: f"{v:.3f}" for k, v in means.items() if k in ("loss", "acc", "ctc")}
        shown.update({k: f"{v:.1f}" for k, v in rates.items()})
        bar.set_postfix(shown, refresh=False)
        self._write_log({"step": self.state.step, "lr": lr, **means, **rates})

    def _log_valid(self, means: dict[str, float]) -> None:
        if self.dist.is_main and means:
            log.info("step %d valid %s", self.state.step, means)
            self._write_log(
                {"step": self.state.step, **{f"valid_{k}": v for k, v in means.items()}}
            )

    def _write_log(self, record: dict[str, Any]) -> None:
        record.update(epoch=self.state.epoch, skipped=self.state.skipped)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / LOG_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint_path(self, step: int) -> Path:
        return self.out_dir / CHECKPOINT_DIR / f"step_{step:08d}.pt"

    def save(self) -> Path:
        """Write the resumable state of this step; keeps the newest ``keep_checkpoints``."""
        path = self.checkpoint_path(self.state.step)
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_atomic(_rng_state(), path.with_suffix(f".rng{self.dist.rank}"))
        if self.engine is not None:  # the frozen parts (a whole base LLM) are not state
            self.engine.save_checkpoint(
                str(path.parent), tag=path.stem, exclude_frozen_parameters=True
            )
        if self.dist.is_main:
            checkpoint = {
                "state": dataclasses.asdict(self.state),
                "config": self.cfg.to_dict(),
                "deepspeed": self.engine is not None,
            }
            if self.engine is None:
                checkpoint.update(
                    model=trainable_state(self.model),
                    optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(),
                )
            _save_atomic(checkpoint, path)
            self._prune()
        return path

    def _prune(self) -> None:
        old = sorted(self.checkpoint_path(0).parent.glob("step_*.pt"))[: -self.cfg.keep_checkpoints]
        for path in old:
            for stale in path.parent.glob(f"{path.stem}*"):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)

    def latest_checkpoint(self) -> Path | None:
        found = sorted((self.out_dir / CHECKPOINT_DIR).glob("step_*.pt"))
        return found[-1] if found else None

    def resume(self, path: str | Path | None = None) -> bool:
        """Restore the newest (or the given) checkpoint; False when there is none."""
        path = Path(path) if path is not None else self.latest_checkpoint()
        if path is None:
            return False
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError) as err:
            raise CheckpointError(f"cannot read training checkpoint {path}: {err}") from err
        if checkpoint.get("deepspeed", False) != (self.engine is not None):
            raise CheckpointError(
                f"training checkpoint {path} was written "
                f"{'with' if checkpoint.get('deepspeed') else 'without'} DeepSpeed; resume it "
                "with the same deepspeed setting, or start in a new output_dir"
            )
        if self.engine is not None:
            self._load_deepspeed(path)
        else:
            self._load_trainable(checkpoint.get("model", {}), path)
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.state = TrainState(**checkpoint["state"])
        rng = path.with_suffix(f".rng{self.dist.rank}")
        if rng.exists():
            _set_rng_state(torch.load(rng, map_location="cpu", weights_only=False))
        log.info("resumed from %s at step %d", path, self.state.step)
        return True

    def _load_trainable(self, saved: dict[str, torch.Tensor], path: Path) -> None:
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        missing = sorted(set(params) - set(saved))
        unexpected = sorted(set(saved) - set(params))
        if missing or unexpected:
            raise CheckpointError(
                f"training checkpoint {path} does not fit this model: "
                f"{len(missing)} trainable parameters missing (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); was the config changed?"
            )
        with torch.no_grad():
            for name, param in params.items():
                if saved[name].shape != param.shape:
                    raise CheckpointError(
                        f"training checkpoint {path}: {name} has shape "
                        f"{tuple(saved[name].shape)}, the model {tuple(param.shape)}"
                    )
                param.copy_(saved[name])

    def _load_deepspeed(self, path: Path) -> None:
        """The engine's state from its folder beside ``path`` (the trainable parameters only)."""
        folder = path.with_suffix("")  # save_checkpoint(dir, tag) writes dir/tag/
        if not folder.is_dir():  # DeepSpeed would fail a bare assert
            raise CheckpointError(f"training checkpoint {path}: its DeepSpeed folder is missing")
        try:
            self.engine.load_checkpoint(str(path.parent), tag=path.stem, load_module_strict=False)
        except (RuntimeError, ValueError, KeyError, IndexError, AssertionError) as err:
            raise CheckpointError(
                f"training checkpoint {path} does not fit this model (was the config changed?): "
                f"{err}"
            ) from err

    def _deepspeed_engine(self) -> Any:
        """The engine: it owns accumulation, clipping, the optimizer and the scheduler steps."""
        # DeepSpeed picks its accelerator once, on first use: the CPU where the run trains on it
        if self.device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        try:
            import deepspeed
            from deepspeed.accelerator import get_accelerator
        except ImportError as err:
            raise ConfigError(
                "deepspeed: the config asks for DeepSpeed but it is not installed "
                "(pip install deepspeed), or remove the deepspeed section to train with DDP"
            ) from err
        import torch.distributed as dist

        accelerator = get_accelerator()
        if accelerator.device_name() != self.device.type:
            raise ConfigError(
                f"deepspeed: it runs on {accelerator.device_name()!r} but the training "
                f"device is {self.device.type!r}; set DS_ACCELERATOR={self.device.type} (or the "
                "config's device) before DeepSpeed is first imported"
            )

        if not dist.is_initialized() and self.dist.world_size == 1:
            # one process without a launcher: DeepSpeed would look for MPI; an in-process
            # store is all a group of one needs (no port), and LOCAL_RANK what it asks for
            os.environ.setdefault("LOCAL_RANK", "0")
            backend = accelerator.communication_backend_name()
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        given = self.cfg.deepspeed
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,  # a batch is one dynamic batch of utterances
            "gradient_accumulation_steps": self.optim.grad_accum,
            "gradient_clipping": self.optim.clip_norm,
            # The engine turns an outer cuda autocast off unless told to keep it; an empty list
            # of "lower precision" modules keeps gradient reductions in fp32, as in DDP.
            "torch_autocast": {
                "enabled": uses_bf16(self.device, self.optim.bf16),
                "dtype": "bfloat16",
                "lower_precision_safe_modules": [],
            },
            **given,
            # ZeRO-2 unless told otherwise, also when only other zero settings are given
            "zero_optimization": {"stage": 2, **given.get("zero_optimization", {})},
        }
        engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.model,
            optimizer=self.optimizer,
            lr_scheduler=self.scheduler,
            config=ds_config,
        )
        return engine


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# mooer train CONFIG


def train(cfg: TrainConfig) -> Path | None:
    """Run the training ``cfg`` describes; returns the exported model dir (on the main rank)."""
    from tqdm import tqdm

    from mooer.asr.frontend import Frontend
    from mooer.devices import resolve_device
    from mooer.train.data import EncodedDataset, SpeechDataset, encode_corpus, make_loader
    from mooer.train.export import export_model

    device = resolve_device(cfg.device)
    dist = init_distributed(device)
    if dist.world_size > 1 and device.type != "cpu":
        device = torch.device(device.type, dist.local_rank)
        getattr(torch, device.type).set_device(device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.optim.seed + dist.rank)
    objective = _build_on_rank0_first(cfg, device, dist)
    trainer = Trainer(objective, cfg, device, dist)
    if cfg.resume:
        trainer.resume()
    frontend = Frontend(objective.cmvn)
    pin = device.type == "cuda"
    shard = {"rank": dist.rank, "world_size": dist.world_size}

    def stream(start: int) -> Iterable[Any]:
        dataset = SpeechDataset(
            cfg.data.train, frontend, cfg.data, seed=cfg.optim.seed, start_batch=start, **shard
        )
        return make_loader(dataset, cfg.data.num_workers, pin)

    if cfg.data.cache_encoder:
        once = SpeechDataset(cfg.data.train, frontend, cfg.data, train=False, **shard)
        with torch.no_grad(), autocast(device, cfg.optim.bf16):
            cached = encode_corpus(
                tqdm(make_loader(once, cfg.data.num_workers), desc="encoding", file=sys.stderr),
                lambda batch: objective.encode(batch.to(device)),
            )

        def stream(start: int) -> Iterable[Any]:  # noqa: F811 (the cached variant)
            return EncodedDataset(cached, cfg.data, seed=cfg.optim.seed, start_batch=start)

    valid_set = None
    if cfg.data.valid:
        valid_set = SpeechDataset(cfg.data.valid, frontend, cfg.data, train=False)
    trainer.fit(stream, (lambda: make_loader(valid_set, 0)) if valid_set else None)
    if not dist.is_main:
        return None
    return export_model(objective, Path(cfg.output_dir) / "final", cfg)


def _build_on_rank0_first(cfg: TrainConfig, device: torch.device, dist: Distributed) -> nn.Module:
    """The model; rank 0 writes the files it is built from (CMVN, LLM, vocabulary) first."""
    from mooer.train.objective import build_objective

    if dist.world_size == 1:
        return build_objective(cfg, device)
    import torch.distributed

    if not dist.is_main:
        torch.distributed.barrier()  # until rank 0 has written them
    objective = build_objective(cfg, device)
    if dist.is_main:
        torch.distributed.barrier()
    return objective


def train_command(config: str | Path, overrides: Sequence[str] = ()) -> int:
    """``mooer train CONFIG [--set key=value ...]``: train, then export to OUTPUT_DIR/final."""
    from mooer.train.config import load_config

    cfg = load_config(config, overrides=overrides)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    exported = train(cfg)
    if exported is not None:
        print(f"exported the trained model to {exported}")
    return 0
