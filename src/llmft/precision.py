"""Dtypes and compute precision: one place for each rule, used by every package that computes.

- :data:`DTYPES`: the config's dtype names (``model.dtype``, ``model.compute_dtype``,
  ``distributed.fsdp.param_dtype``) as torch dtypes; :func:`label` gives their short labels.
- :func:`resolve_precision`: ``train.precision`` (auto, fp32, bf16) on a device -> the autocast dtype,
  or None for no autocast.
- :func:`matmul_precision`: the label of the dtype the matrix products of a run really run in. The
  logs, ``summary.json`` and the MFU peak all take this one label.
- :func:`autocast`: the autocast context of training, evaluation, generation and prediction.
"""

from __future__ import annotations

import contextlib

import torch

from llmft.config import FsdpSection, ModelSection

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
LABELS: dict[str, str] = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# A label back to its dtype (the CPU's measured matmul peak is measured in it).
LABEL_DTYPES: dict[str, torch.dtype] = {LABELS[name]: dtype for name, dtype in DTYPES.items()}


def label(dtype: torch.dtype | str) -> str:
    """The short label (fp32, bf16, fp16) of a torch dtype or of a config dtype name."""
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    return LABELS[name]


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 beats fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` on ``device``; None means plain fp32."""
    if setting == "fp32":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else None


def matmul_precision(compute_dtype: torch.dtype | None, model: ModelSection, fsdp: FsdpSection) -> str:
    """The label of the dtype a run's matrix products run in: the one a run reports and takes MFU against.

    The autocast dtype, when there is autocast; else the dtype FSDP gathers the weights in
    (``fsdp.param_dtype``); else, for a 4-bit base, the dtype its weights are dequantized to
    (``model.compute_dtype``); else the storage dtype (``model.dtype``). So a LoRA over a bf16 base
    without autocast multiplies in bf16 and a QLoRA run with ``train.precision fp32`` and a bf16
    compute dtype reports bf16, and its MFU is against the bf16 peak, not the (up to 15x lower) fp32 one.
    """
    if compute_dtype is not None:
        return label(compute_dtype)
    dequantized = model.compute_dtype if model.quantization == "4bit" else None
    return LABELS[fsdp.param_dtype or dequantized or model.dtype]


def autocast(device: torch.device, compute_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``compute_dtype`` on ``device``; with None, a disabled autocast (plain fp32).

    Disabled rather than absent, so that an autocast opened by a caller is turned off inside.
    """
    return torch.autocast(
        device.type, dtype=compute_dtype or torch.float32, enabled=compute_dtype is not None
    )
