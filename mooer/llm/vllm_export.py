"""The Qwen2 with the release's LoRA merged, written once to a folder vLLM loads.

The folder is named by a fingerprint of what went into it (the LLM and LoRA files' names, sizes
and modification times, and the precision), under ``$MOOER_CACHE`` (default ``~/.cache/mooer``)
``/vllm/``: a changed LoRA or LLM has another fingerprint, so it is exported afresh, and a vLLM
server started on an older export is recognised as stale by its folder's name. A folder is
written under a temporary name and renamed when complete; ``mooer-export.json`` inside it says
what it was made from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mooer.errors import CheckpointError

if TYPE_CHECKING:
    from mooer.model import SpeechLLM

EXPORT_FORMAT = 1  # bump when the folder's contents change
MANIFEST = "mooer-export.json"


def cache_root() -> Path:
    return Path(os.environ.get("MOOER_CACHE", Path.home() / ".cache" / "mooer")) / "vllm"


def fingerprint(model: SpeechLLM) -> str:
    """What the merged LLM of ``model`` is made from, as a short hex digest."""
    if model.paths is None:
        raise CheckpointError("the vLLM backend needs a model loaded from a checkpoint folder")
    sources = {"format": EXPORT_FORMAT, "dtype": str(model.llm_dtype), "files": _files(model)}
    return hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()[:16]


def export_name(model: SpeechLLM) -> str:
    """The export folder's name: the LLM folder's name and the fingerprint."""
    assert model.paths is not None
    return f"{Path(model.paths.llm).name}-{fingerprint(model)}"


def merged_llm_dir(model: SpeechLLM) -> Path:
    """The export of ``model``'s LLM (LoRA merged), written now if no complete one exists."""
    out = cache_root() / export_name(model)
    if (out / MANIFEST).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with torch.inference_mode():
            model.llm.save_pretrained(partial, safe_serialization=True)
        model.tokenizer.save_pretrained(partial)
        # vLLM would take the LLM's sampling defaults from it; mooer sets every knob itself.
        (partial / "generation_config.json").unlink(missing_ok=True)
        manifest = {"fingerprint": fingerprint(model), "sources": _files(model)}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        if not (out / MANIFEST).is_file():  # another process may have finished first
            shutil.rmtree(out, ignore_errors=True)
            partial.rename(out)
    except OSError as exc:
        raise CheckpointError(f"cannot write the merged LLM for vLLM to {out}: {exc}") from exc
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def _files(model: SpeechLLM) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every file of the LLM and LoRA folders."""
    assert model.paths is not None
    folders = [Path(model.paths.llm)]
    if model.paths.lora is not None:
        folders.append(Path(model.paths.lora))
    found = []
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            stat = path.stat()
            found.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    return found
