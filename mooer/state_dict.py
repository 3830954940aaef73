"""Reading released ``.pth``/``.pt`` checkpoints and loading them strictly, with errors naming the file.

Shared by every part that loads weights (encoder, adapter, speech head), so that a missing key, a
truncated file or a wrong shape reads the same way everywhere.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mooer.errors import CheckpointError


def read_checkpoint(path: str | os.PathLike, mmap: bool = True) -> Any:
    """``torch.load`` a checkpoint file on the CPU; every failure is a ``CheckpointError``.

    Tensors-only unpickling is tried first; files that need more (old DeepSpeed states pickle
    their config objects) fall back to full unpickling, which runs code: only load files you trust.
    Zip-format files are memory-mapped, so a 632 MB encoder is not copied before use; with
    ``mmap=False`` each tensor gets its own memory, freed on its own (a mapping stays resident
    while any tensor from it lives).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as err:
            if "weights_only" not in str(err).lower().replace(" ", "_"):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except (
        Exception
    ) as err:  # torch raises RuntimeError, EOFError, UnpicklingError... for bad files
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated or corrupt?): {err}"
        ) from err
    return obj


def read_state_dict(
    path: str | os.PathLike, key: str | None = None, mmap: bool = True
) -> dict[str, torch.Tensor]:
    """The state dict in a file (or under ``key`` of the dict in it): its tensor entries only."""
    return state_dict_of(read_checkpoint(path, mmap), path, key)


def state_dict_of(obj: Any, path: str | os.PathLike, key: str | None = None) -> dict:
    """The tensors of ``obj`` (or of ``obj[key]``); anything else in the dict is metadata."""
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry (found {found})")
        obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}  # skip metadata entries


def describe_keys(keys: list[str], limit: int = 5) -> str:
    """'a, b, c ... (12 in all)': enough to diagnose a layout mismatch without flooding a log."""
    shown = ", ".join(keys[:limit])
    return f"{shown} ... ({len(keys)} in all)" if len(keys) > limit else shown


def check_state_dict(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], what: str
) -> None:
    """Raise naming the missing keys, unexpected keys and wrong shapes of ``state``, if any."""
    problems = []
    if missing := sorted(set(expected) - set(state)):
        problems.append(f"missing keys {describe_keys(missing)}")
    if unexpected := sorted(set(state) - set(expected)):
        problems.append(f"unexpected keys {describe_keys(unexpected)}")
    shapes = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if shapes:
        problems.append(f"wrong shapes {describe_keys(shapes)}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state, strict=True)`` after a check that says what does not fit."""
    check_state_dict(module.state_dict(), state, what)
    module.load_state_dict(state, strict=True)
