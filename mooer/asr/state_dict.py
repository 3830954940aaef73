"""Reading released ``.pth``/``.pt`` state dicts safely, with errors that name the file."""

from __future__ import annotations

import os
import pickle
import zipfile

import torch

from mooer.errors import CheckpointError


def read_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """``torch.load`` a file holding a state dict (or a dict holding one under ``key``).

    Only tensor entries are returned; anything else in the dict is metadata.

    Tensors-only unpickling is tried first; files that need more (old DeepSpeed states pickle
    their config objects) fall back to full unpickling, which runs code: only load files you trust.
    Zip-format files are memory-mapped, so a 632 MB encoder is not copied before use.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    mmap = zipfile.is_zipfile(path)
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
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry")
        obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}  # skip metadata entries


def describe_keys(keys: list[str], limit: int = 5) -> str:
    """'a, b, c ... (12 in all)': enough to diagnose a layout mismatch without flooding a log."""
    shown = ", ".join(keys[:limit])
    return f"{shown} ... ({len(keys)} in all)" if len(keys) > limit else shown
