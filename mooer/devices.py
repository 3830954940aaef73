"""Device and precision selection: cuda, musa (Moore Threads), mps, cpu."""

from __future__ import annotations

import importlib.util

import torch

from mooer.errors import ConfigError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _musa_available() -> bool:
    if importlib.util.find_spec("torch_musa") is None:
        return False
    import torch_musa  # noqa: F401  (registers the "musa" device with torch)

    return bool(getattr(torch, "musa", None) and torch.musa.is_available())


def resolve_device(name: str | None = None) -> torch.device:
    """``None``/"auto" picks the best available accelerator, else the CPU."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _musa_available():
            return torch.device("musa")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    available = {
        "cpu": lambda: True,
        "cuda": torch.cuda.is_available,
        "musa": _musa_available,
        "mps": lambda: (
            bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
        ),
    }
    if kind not in available:
        raise ConfigError(f"unknown device {name!r}: expected cpu, cuda, musa, mps or auto")
    if not available[kind]():
        raise ConfigError(f"device {name!r} is not available on this machine")
    return torch.device(name)


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The LLM's precision: bf16 on accelerators (as released), fp32 on the CPU by default."""
    if name in (None, "", "auto"):
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}: expected one of {sorted(DTYPES)} or auto")
    return DTYPES[name]
