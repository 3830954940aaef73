"""int8 weights for a model on the CPU: the encoder, the adapter and an in-process LLM.

Dynamic quantisation: every ``nn.Linear`` keeps its weight as int8 (one scale per matrix) and
quantises its input per call, so nothing is calibrated and the released fp32 weights stay the
source. The Linear layers hold 99 % of the encoder's multiply-adds; the FSMN convolutions, layer
norms and the LLM's embedding table stay fp32. Why torch's own kernels rather than ONNX Runtime:
see docs/checkpoints.md ("int8 on the CPU").
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from mooer.asr.encoder import FeedForward, SANMAttention, SANMEncoder
from mooer.errors import ConfigError

QUANTIZE_MODES = ("int8",)
_INT8_ENGINES = ("x86", "fbgemm", "onednn", "qnnpack")  # torch's int8 CPU kernels, best first


def check_quantize(
    quantize: str | None, device: torch.device, llm_dtype: torch.dtype | None = None
) -> None:
    """Refuse a ``quantize`` value this device, torch build or LLM precision cannot run, naming
    the alternative; ``llm_dtype``: the precision of an LLM to quantise too (None: none)."""
    if quantize is None:
        return
    if quantize not in QUANTIZE_MODES:
        raise ConfigError(f"quantize {quantize!r}: expected one of {', '.join(QUANTIZE_MODES)}")
    if device.type != "cpu":
        raise ConfigError(
            f"quantize {quantize} runs on the CPU only, not on {device}: on an accelerator leave "
            "it out (the encoder runs under the LLM's bf16/fp16 autocast there), or pass "
            "--device cpu"
        )
    if _int8_engine() is None:
        raise ConfigError(
            f"quantize {quantize}: this torch build ({torch.__version__}) has no int8 CPU kernels "
            f"(supported quantized engines: {list(_supported_engines())}): leave --quantize out "
            "to run in fp32"
        )
    if llm_dtype is not None and llm_dtype != torch.float32:
        raise ConfigError(
            f"quantize {quantize} makes the LLM's int8 weights from fp32 ones, but dtype is "
            f"{str(llm_dtype).removeprefix('torch.')}: leave --dtype out (fp32 on the CPU) or "
            "leave --quantize out"
        )


def quantize_int8(module: nn.Module) -> nn.Module:
    """Replace ``module``'s Linear layers by dynamic int8 ones, in place (eval only).

    In place, one layer at a time, so peak memory stays at the fp32 model's: each fp32 weight is
    freed once its int8 copy exists. Call :func:`check_quantize` first.
    """
    names = [name for name, m in module.named_modules() if type(m) is nn.Linear]
    with _int8_kernels():
        for name in names:  # by name, so that no list keeps the replaced fp32 layers alive
            parent, _, child = name.rpartition(".")
            int8 = _int8_linear(module.get_submodule(name))
            setattr(module.get_submodule(parent) if parent else module, child, int8)
    return module.eval()


def quantize_encoder_int8(encoder: SANMEncoder) -> SANMEncoder:
    """:func:`quantize_int8` for the SAN-M encoder, with fewer operations per block: each
    feed-forward's first layer and its ReLU one int8 op, each FSMN memory one conv
    (``SANMAttention.fold_fsmn``). On a busy CPU every operation's threads wait for one
    another, so fewer operations are faster; the output stays as close to fp32."""
    # torch.ao is read only here: a build without it is refused by check_quantize, not at import
    import torch.ao.nn.intrinsic as intrinsic
    import torch.ao.nn.intrinsic.quantized.dynamic as intrinsic_dynamic

    with _int8_kernels():
        for module in encoder.modules():
            if isinstance(module, SANMAttention):
                module.fold_fsmn()
            elif isinstance(module, FeedForward) and type(module.activation) is nn.ReLU:
                float_pair = intrinsic.LinearReLU(module.w_1, module.activation)
                module.w_1 = _int8_linear(float_pair, intrinsic_dynamic.LinearReLU)
                module.activation = nn.Identity()
    return quantize_int8(encoder)


@contextmanager
def _int8_kernels() -> Iterator[None]:
    """torch's int8 CPU engine selected, its deprecation notices silenced."""
    engine = _int8_engine()
    if torch.backends.quantized.engine != engine:
        torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; check_quantize notices its removal.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings(
            "ignore", message=".*quantized tensor creation", category=UserWarning
        )
        yield


def _int8_linear(layer: nn.Module, kind: type[nn.Module] | None = None) -> nn.Module:
    """The dynamic int8 ``kind`` (default: Linear) of the fp32 Linear ``layer`` (or Linear +
    ReLU pair)."""
    layer.qconfig = torch.ao.quantization.default_dynamic_qconfig
    for part in layer.children():  # a fused pair's Linear is read with the same settings
        part.qconfig = layer.qconfig
    return (kind or torch.ao.nn.quantized.dynamic.Linear).from_float(layer)


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` holds int8 layers made by :func:`quantize_int8`."""
    return any(".quantized." in type(m).__module__ for m in module.modules())


def weight_count(module: nn.Module) -> int:
    """About the weights of ``module``, its int8 Linear layers' matrices included (they hold no
    parameters; their biases and a head tied to an embedding table are not told apart)."""
    packed = sum(
        m.in_features * m.out_features
        for m in module.modules()
        if ".quantized." in type(m).__module__ and hasattr(m, "in_features")
    )
    return packed + sum(p.numel() for p in module.parameters())


def refuse_quantized(module: nn.Module, action: str) -> None:
    """int8 layers have no gradients and no fp32 weights to save, folded FSMN filters are not the
    released ones: ``action`` needs the fp32 model as loaded."""
    folded = any(getattr(m, "fsmn_folded", False) for m in module.modules())
    if folded or is_quantized(module):
        raise ConfigError(
            f"{action} needs the fp32 model, but this one is quantised to int8: load it again "
            "without quantize"
        )


def _supported_engines() -> list[str]:
    return list(torch.backends.quantized.supported_engines)


def _int8_engine() -> str | None:
    """The quantized engine to use, or None when this build has no int8 CPU kernels."""
    if not hasattr(torch.ao, "quantization") or not hasattr(
        torch.ao.quantization, "quantize_dynamic"
    ):
        return None
    supported = _supported_engines()
    current = torch.backends.quantized.engine
    if current in _INT8_ENGINES and current in supported:
        return current
    return next((e for e in _INT8_ENGINES if e in supported), None)
