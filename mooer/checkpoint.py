"""Where each piece of a MooER checkpoint lives, for every released layout.

Two layouts exist (see docs/checkpoints.md):

* **MTL** (MooER-MTL-5K, MooER-MTL-80K): ``paraformer_encoder/{am.mvn,paraformer-encoder.pth}`` and one
  folder per fine-tuned variant (``asr/``, ``ast/``, ``asr_ast_mtl/``), each holding
  ``adapter_project.pt`` and a PEFT ``lora_weights/`` dir. The Qwen2 base model is separate (``--llm``).
* **flat** (MooER-omni-v1, MooER-S2ST-v1, and the models mooer itself trains): ``am.mvn``,
  ``paraformer-encoder.pth``, ``adapter_project.pt``, ``llm/`` (a full Hugging Face model dir), and
  optionally ``lora/``, the speech head ``g_*`` / ``spk_*`` and ``prompt.wav``.

This module only finds files and says precisely what is missing; loading is done by the parts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mooer.errors import CheckpointError

MTL_VARIANTS = ("asr", "ast", "asr_ast_mtl")
# Which MTL variant folder serves a task, in order of preference.
VARIANT_FOR_TASK = {
    "asr": ("asr", "asr_ast_mtl"),
    "ast": ("ast", "asr_ast_mtl"),
    "mtl": ("asr_ast_mtl",),
}

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def task_serving(tasks: Iterable[str]) -> str:
    """The task whose variant folder serves every task in ``tasks`` (a test set's, say): one of
    asr or ast alone, or mtl (asr_ast_mtl/) for asr and ast together; other tasks (chat) pick
    no variant, so a set of them alone gets asr, the default."""
    wanted = {t for t in tasks if t in VARIANT_FOR_TASK}
    if len(wanted) == 1:
        return wanted.pop()
    return "mtl" if wanted else "asr"


@dataclass(frozen=True)
class CheckpointPaths:
    """Every file a model needs; optional parts are ``None`` when the checkpoint has none."""

    layout: str  # "mtl" or "flat"
    root: Path
    cmvn: Path
    encoder: Path
    adapter: Path
    llm: Path
    lora: Path | None = None
    variant: str | None = None  # the MTL folder in use: asr, ast or asr_ast_mtl
    generator: Path | None = None
    speaker_encoder: Path | None = None
    prompt_wav: Path | None = None

    @property
    def has_speech_head(self) -> bool:
        return self.generator is not None and self.speaker_encoder is not None


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise CheckpointError(f"missing {what}: expected {path}")
    return path


def _latest(root: Path, prefix: str) -> Path | None:
    """The highest-step ``g_00112000``-style file, or None."""
    found = sorted(p for p in root.glob(f"{prefix}_*") if p.name[len(prefix) + 1 :].isdigit())
    return found[-1] if found else None


def detect_layout(root: Path) -> str:
    if (root / "paraformer_encoder").is_dir():
        return "mtl"
    if (root / "paraformer-encoder.pth").exists() or (root / "adapter_project.pt").exists():
        return "flat"
    raise CheckpointError(
        f"{root} is not a MooER checkpoint: expected either a paraformer_encoder/ folder "
        "(MooER-MTL layout) or paraformer-encoder.pth + adapter_project.pt (flat layout)"
    )


def resolve_variant(root: Path, task: str, variant: str | None) -> str:
    present = [v for v in MTL_VARIANTS if (root / v).is_dir()]
    if not present:
        raise CheckpointError(
            f"{root} has no variant folder: expected one of {', '.join(MTL_VARIANTS)}"
        )
    if variant is not None:
        if variant not in present:
            raise CheckpointError(f"variant {variant!r} not in {root}: it has {', '.join(present)}")
        return variant
    for candidate in VARIANT_FOR_TASK.get(task, (task,)):
        if candidate in present:
            return candidate
    raise CheckpointError(
        f"no variant of {root} serves task {task!r}: it has {', '.join(present)} "
        f"(task asr uses asr/ or asr_ast_mtl/, ast uses ast/ or asr_ast_mtl/, mtl or asr and ast "
        "together use asr_ast_mtl/; --variant picks one)"
    )


def locate(
    model: str | Path,
    llm: str | Path | None = None,
    task: str = "asr",
    variant: str | None = None,
) -> CheckpointPaths:
    """Find the files of a checkpoint dir (or hub id, downloaded when possible)."""
    root = Path(model).expanduser()
    if not root.exists():
        if isinstance(model, str) and HUB_ID.match(model):
            root = download(model)
        else:
            raise CheckpointError(f"model directory not found: {root}")
    if not root.is_dir():
        raise CheckpointError(f"model path is not a directory: {root}")
    layout = detect_layout(root)
    llm_dir = Path(llm).expanduser() if llm is not None else None

    if layout == "mtl":
        enc_dir = root / "paraformer_encoder"
        chosen = resolve_variant(root, task, variant)
        vdir = root / chosen
        if llm_dir is None:
            raise CheckpointError(
                f"{root} is a MooER-MTL checkpoint, whose Qwen2 base model is separate: "
                "pass --llm DIR (Qwen2-7B-Instruct, or the 1.5B model for the 1.5B variant)"
            )
        paths = CheckpointPaths(
            layout="mtl",
            root=root,
            cmvn=_require(enc_dir / "am.mvn", "CMVN statistics (paraformer_encoder/am.mvn)"),
            encoder=_require(enc_dir / "paraformer-encoder.pth", "encoder weights"),
            adapter=_require(vdir / "adapter_project.pt", f"adapter weights of {chosen}/"),
            llm=llm_dir,
            lora=_require(vdir / "lora_weights", f"LoRA folder of {chosen}/"),
            variant=chosen,
        )
    else:
        lora = root / "lora"
        paths = CheckpointPaths(
            layout="flat",
            root=root,
            cmvn=_require(root / "am.mvn", "CMVN statistics (am.mvn)"),
            encoder=_require(root / "paraformer-encoder.pth", "encoder weights"),
            adapter=_require(root / "adapter_project.pt", "adapter weights"),
            llm=llm_dir if llm_dir is not None else root / "llm",
            lora=lora if lora.is_dir() else None,
            generator=_latest(root, "g"),
            speaker_encoder=_latest(root, "spk"),
            prompt_wav=(root / "prompt.wav") if (root / "prompt.wav").exists() else None,
        )
    _require(paths.llm, "Qwen2 model folder")
    _require(paths.llm / "config.json", "Qwen2 config (config.json in the LLM folder)")
    if paths.lora is not None:
        _require(paths.lora / "adapter_config.json", "LoRA config (adapter_config.json)")
    return paths


def download(repo_id: str) -> Path:
    """Fetch a hub checkpoint with huggingface_hub (or modelscope); offline this fails clearly."""
    errors = []
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        errors.append("huggingface_hub is not installed (pip install 'mooer[hub]')")
    else:
        try:
            return Path(snapshot_download(repo_id))
        except Exception as exc:  # network, auth, missing repo: all reported the same way
            errors.append(
                f"huggingface_hub: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            )
    try:
        from modelscope import snapshot_download as ms_download
    except ImportError:
        errors.append("modelscope is not installed")
    else:
        try:
            return Path(ms_download(repo_id))
        except Exception as exc:
            errors.append(f"modelscope: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    raise CheckpointError(
        f"{repo_id!r} is not a local directory and could not be downloaded "
        f"({'; '.join(errors)}). Download it elsewhere and pass its local path."
    )
