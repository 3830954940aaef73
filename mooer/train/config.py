"""The training configuration: typed dataclasses, read from YAML and validated once.

A run is described by one YAML file (``mooer train CONFIG``)::

    output_dir: runs/demo
    data:
      train: [data/train/manifest.jsonl]      # .jsonl manifests, or shard lists of WeNet tars
      valid: [data/heldout/manifest.jsonl]
      max_frames_in_batch: 6000               # 60 ms LFR frames, padding included
    model:
      encoder: {output_size: 192, linear_units: 512, num_blocks: 6}   # from scratch ...
      llm_scratch: {hidden_size: 256, num_layers: 4}
      full_llm: true
      # ... or start from a release:  checkpoint: path/to/MooER-MTL-5K  (+ llm: path/to/Qwen2)
    optim: {lr: 1.0e-3, warmup_steps: 500, max_steps: 20000}

Every field has a default here; an unknown key, a wrong type or a value out of range raises
``ConfigError`` naming the dotted field, e.g. ``optim.lr: expected a positive number, got -1``.
The resolved config is stored with checkpoints and exported models (``mooer.json``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mooer.asr.encoder import EncoderConfig
from mooer.errors import ConfigError, check_number, read_json_file

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj")
SCHEDULES = ("cosine", "linear", "constant")
# DeepSpeed settings the trainer derives from ``optim`` (one source for each)
DEEPSPEED_FROM_OPTIM = {
    "gradient_accumulation_steps": "optim.grad_accum",
    "gradient_clipping": "optim.clip_norm",
    "optimizer": "optim (mooer's AdamW)",
    "scheduler": "optim (warmup_steps, schedule)",
    "train_batch_size": "optim.grad_accum (a micro-batch is one dynamic batch)",
    "train_micro_batch_size_per_gpu": "data.max_frames_in_batch",
    # DeepSpeed's own half-precision weights would cast the frozen encoder too; the model runs
    # under mooer's autocast instead, as in the plain loop
    "bf16": "optim.bf16 (autocast)",
    "fp16": "optim.bf16 (autocast)",
    "torch_autocast": "optim.bf16 (autocast)",
}
Check = Callable[[Any], str | None]  # returns what was expected, or None when the value is fine


def _positive(v: Any) -> str | None:
    return None if v > 0 else "a positive number"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "a number >= 0"


def _fraction(v: Any) -> str | None:
    return None if 0 <= v < 1 else "a number in [0, 1)"


def _unit(v: Any) -> str | None:
    return None if 0 <= v <= 1 else "a number in [0, 1]"


def _one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"one of {', '.join(choices)}"

    return check


def _betas(v: tuple[float, float]) -> str | None:
    return None if all(0 <= b < 1 for b in v) else "two numbers in [0, 1)"


def _checked(default: Any = dataclasses.MISSING, check: Check | None = None, **kw: Any) -> Any:
    """A dataclass field whose value ``check`` validates when the config is loaded."""
    return field(default=default, metadata={"check": check} if check else {}, **kw)


@dataclass
class DataConfig:
    """Where the audio comes from and how it is batched."""

    train: list[str] = field(default_factory=list)  # manifests (.jsonl) or shard lists (.list)
    valid: list[str] = field(default_factory=list)
    min_duration: float = _checked(0.2, _non_negative)  # seconds; shorter utterances are skipped
    max_duration: float = _checked(20.0, _positive)
    max_frames_in_batch: int = _checked(6000, _positive)  # LFR frames (60 ms), padded batch size
    max_utts_in_batch: int = _checked(256, _positive)
    shuffle_buffer: int = _checked(2000, _positive)  # 1 disables shuffling
    num_workers: int = _checked(2, _non_negative)  # DataLoader processes computing features
    tasks: list[str] = field(default_factory=list)  # keep only these tasks (empty: all)
    cache_encoder: bool = False  # run a frozen encoder once and train on its cached outputs


@dataclass
class LlmScratchConfig:
    """A randomly initialised Qwen2 with the real Qwen tokenizer, for small demo models."""

    hidden_size: int = _checked(256, _positive)
    num_layers: int = _checked(4, _positive)
    num_heads: int = _checked(4, _positive)
    num_kv_heads: int = _checked(2, _positive)
    intermediate_size: int = _checked(768, _positive)
    tokenizer: str | None = None  # a tokenizer dir (mooer.train.tokenizer); default: Qwen's own


@dataclass
class ModelConfig:
    """Which model to train and which of its parts learn.

    Start either from a checkpoint folder in a released layout (``checkpoint``, plus ``llm`` for the
    MTL layout), or from parts: ``encoder`` dims (random) or ``encoder_init`` (a
    ``paraformer-encoder.pth``), ``cmvn`` (an ``am.mvn``; computed from the training data when
    absent), and ``llm`` (a Hugging Face Qwen2 dir) or ``llm_scratch`` dims.
    """

    checkpoint: str | None = None
    llm: str | None = None
    llm_scratch: LlmScratchConfig | None = None
    encoder: EncoderConfig | None = None
    encoder_init: str | None = None
    cmvn: str | None = None
    adapter_downsample: int = _checked(2, _positive)  # encoder frames per LLM token (2: 120 ms)
    adapter_hidden: int = _checked(2048, _positive)
    train_encoder: bool = False  # released models keep it frozen
    gradient_checkpointing: bool = False  # of the trainable encoder's blocks
    full_llm: bool = False  # train every LLM weight (small models) instead of a LoRA
    lora_r: int = _checked(64, _positive)
    lora_alpha: int = _checked(16, _positive)
    lora_dropout: float = _checked(0.05, _fraction)
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    ctc_weight: float = _checked(0.0, _unit)  # 1.0 trains the encoder + CTC head alone, no LLM
    llm_dtype: str = _checked("auto", _one_of("auto", "fp32", "bf16"))


@dataclass
class OptimConfig:
    """AdamW with linear warmup then decay; steps count optimizer updates, not micro-batches."""

    lr: float = _checked(1e-4, _positive)
    betas: tuple[float, float] = _checked((0.9, 0.999), _betas)
    weight_decay: float = _checked(0.01, _non_negative)
    warmup_steps: int = _checked(1000, _non_negative)
    schedule: str = _checked("cosine", _one_of(*SCHEDULES))
    min_lr_ratio: float = _checked(0.0, _unit)  # the decay ends at lr * min_lr_ratio
    grad_accum: int = _checked(1, _positive)
    clip_norm: float = _checked(1.0, _non_negative)  # 0 disables clipping
    max_steps: int | None = _checked(None, _positive)
    max_epochs: int | None = _checked(None, _positive)
    seed: int = _checked(42, _non_negative)
    bf16: bool = True  # autocast on cuda/musa; the CPU always trains in fp32


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    output_dir: str = "runs/mooer"
    device: str = "auto"
    threads: int | None = _checked(None, _positive)  # torch CPU threads (tiny models: 1 is best)
    log_interval: int = _checked(10, _positive)  # optimizer steps between log lines
    save_interval: int = _checked(1000, _positive)  # optimizer steps between checkpoints
    valid_interval: int = _checked(1000, _positive)
    keep_checkpoints: int = _checked(2, _positive)
    resume: bool = True  # continue from the newest checkpoint in output_dir
    # DeepSpeed settings (ZeRO-2 by default), or a DeepSpeed JSON file such as the release's
    deepspeed: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read and validate a YAML training config; relative paths stay relative to the cwd.

    ``overrides`` are ``section.key=value`` assignments (values parsed as YAML) applied first.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    raw = raw or {}
    for assignment in overrides:
        _override(raw, assignment)
    return config_from_dict(raw, source=str(path))


def _override(raw: Any, assignment: str) -> None:
    import yaml

    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r}: expected KEY=VALUE, e.g. optim.lr=1e-4")
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        if not isinstance(node, dict):
            break
        node = node.setdefault(part, {})
    if not isinstance(node, dict):
        raise ConfigError(f"override {assignment!r}: {key.rpartition('.')[0]} is not a section")
    node[leaf] = yaml.safe_load(value)


def config_from_dict(raw: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Build a ``TrainConfig`` from plain data (the parsed YAML), validating every field."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {_show(raw)}")
    if isinstance(raw.get("deepspeed"), (str, Path)):
        raw = {**raw, "deepspeed": read_deepspeed_file(raw["deepspeed"])}
    cfg = _build(TrainConfig, raw, "")
    _check_consistency(cfg)
    return cfg


def read_deepspeed_file(path: str | Path) -> dict[str, Any]:
    """A DeepSpeed JSON config written for another trainer (the release's ``deepspeed_config_zero2
    .json``): its ZeRO and other settings are kept; the keys mooer derives from ``optim`` describe
    that trainer's run, so they are dropped with a warning rather than refused as inline ones are."""
    import warnings

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"deepspeed: DeepSpeed config file not found: {path}")
    settings = read_json_file(path, ConfigError, where="deepspeed: ")
    if not isinstance(settings, dict):
        raise ConfigError(f"deepspeed: {path} holds {_show(settings)}, expected a JSON object")
    dropped = [key for key in settings if key in DEEPSPEED_FROM_OPTIM]
    if dropped:
        ruled = "; ".join(f"{key} by {DEEPSPEED_FROM_OPTIM[key]}" for key in dropped)
        warnings.warn(
            f"deepspeed: {path}: ignoring the settings mooer makes: {ruled}", stacklevel=3
        )
    return {key: value for key, value in settings.items() if key not in dropped}


def _check_consistency(cfg: TrainConfig) -> None:
    """Rules that involve more than one field."""
    m, o, d = cfg.model, cfg.optim, cfg.data
    if o.max_steps is None and o.max_epochs is None:
        raise ConfigError("optim.max_steps: set max_steps or max_epochs, or the run never ends")
    if o.schedule != "constant" and o.max_steps is None:
        raise ConfigError(
            f"optim.max_steps: required by schedule {o.schedule!r} (the decay needs an end); "
            "use schedule: constant to train by epochs alone"
        )
    if d.min_duration >= d.max_duration:
        raise ConfigError(
            f"data.min_duration: expected less than data.max_duration ({d.max_duration}), "
            f"got {d.min_duration}"
        )
    if d.cache_encoder and m.train_encoder:
        raise ConfigError("data.cache_encoder: needs a frozen encoder (model.train_encoder: false)")
    if not d.train:
        raise ConfigError("data.train: expected at least one manifest or shard list")
    if m.checkpoint is None and m.encoder is None and m.encoder_init is None:
        raise ConfigError(
            "model.checkpoint: give a checkpoint folder, or model.encoder dims / model.encoder_init"
        )
    if m.checkpoint is None and m.ctc_weight < 1 and m.llm is None and m.llm_scratch is None:
        raise ConfigError(
            "model.llm: give a Qwen2 folder (or model.llm_scratch dims) to train with"
        )
    if m.llm is not None and m.llm_scratch is not None:
        raise ConfigError("model.llm_scratch: give either model.llm or model.llm_scratch, not both")
    if cfg.deepspeed is not None:
        _check_deepspeed(cfg.deepspeed)
    unknown = sorted(set(m.lora_targets) - set(LORA_TARGETS))
    if unknown:
        raise ConfigError(
            f"model.lora_targets: expected names among {', '.join(LORA_TARGETS)}, got {unknown}"
        )


def _check_deepspeed(ds: Mapping[str, Any]) -> None:
    """ZeRO stages 0-2 only (the trainer reads whole parameters), and no second optim source."""
    for key, instead in DEEPSPEED_FROM_OPTIM.items():
        if key in ds:
            raise ConfigError(f"deepspeed.{key}: set by the trainer from {instead}; remove it")
    zero = ds.get("zero_optimization", {})
    if not isinstance(zero, Mapping):
        raise ConfigError(f"deepspeed.zero_optimization: expected a mapping, got {_show(zero)}")
    stage = zero.get("stage", 2)
    if stage not in (0, 1, 2) or isinstance(stage, bool):
        raise ConfigError(
            f"deepspeed.zero_optimization.stage: expected 0, 1 or 2 (ZeRO-3 partitions the "
            f"parameters, which export and checkpoints read whole), got {_show(stage)}"
        )


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known keys: {', '.join(fields)})")
    values = {}
    for name, value in raw.items():
        where = f"{prefix}{name}"
        value = _convert(hints[name], value, where)
        check = fields[name].metadata.get("check")
        if check is not None and value is not None:
            expected = check(value)
            if expected:
                raise ConfigError(f"{where}: expected {expected}, got {_show(value)}")
        values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError, ConfigError) as err:  # a nested dataclass's own validation
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {err}") from err


def _convert(hint: Any, value: Any, where: str) -> Any:
    """Coerce a YAML value to the annotated type, or say what was expected."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{where}.")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {_show(value)}")
    if hint in (int, float):
        return _number(hint, value, where)
    if hint is str:
        if isinstance(value, (str, Path)):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {_show(value)}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [value]  # a single path where a list is expected
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_show(value)}")
        if origin is tuple and len(args) == 2 and args[1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {_show(value)}")
            return tuple(
                _convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))
            )
        return origin(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_show(value)}")
        return dict(value)
    raise ConfigError(f"{where}: unsupported config type {hint}")  # a bug here, not in the YAML


def _number(kind: type, value: Any, where: str) -> int | float:
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        with contextlib.suppress(ValueError):  # else check_number names the string
            value = float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # YAML's 2.0 and "1e4"
    check_number(value, where, integer=kind is int)
    return kind(value)


def _show(value: Any) -> str:
    if isinstance(value, float) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, str) else str(value)
