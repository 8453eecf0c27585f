"""llmft.precision: dtype names, train.precision on a device, the reported precision label, autocast."""

from __future__ import annotations

import torch

from llmft import precision
from llmft.config import build_config
from llmft.precision import autocast, label, matmul_precision, resolve_precision

CPU = torch.device("cpu")


def test_precision_resolution(monkeypatch):
    assert resolve_precision("fp32", CPU) is None
    assert resolve_precision("bf16", CPU) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("auto", CPU) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("auto", CPU) is None


def test_labels_of_dtypes_and_dtype_names():
    assert label(torch.bfloat16) == label("bfloat16") == "bf16"
    assert label(torch.float16) == "fp16" and label("float32") == "fp32"


def _matmul(overrides: dict, compute_dtype: torch.dtype | None) -> str:
    cfg = build_config({}, overrides)
    return matmul_precision(compute_dtype, cfg.model, cfg.distributed.fsdp)


def test_the_reported_precision_is_the_dtype_the_products_run_in():
    """The autocast dtype; else FSDP's gather dtype; else a 4-bit base's compute dtype; else storage.

    One rule for the run's log line, summary.json and the MFU peak: a QLoRA run with train.precision
    fp32 and a bf16 compute dtype multiplies in bf16, so it reports bf16 (it used to report fp32 while
    its MFU was taken against bf16)."""
    fp16_base = {"model.dtype": "float16"}
    assert _matmul(fp16_base, torch.float16) == "fp16"  # fp16 autocast is never relabelled bf16
    assert _matmul(fp16_base, None) == "fp16"
    assert _matmul({"model.dtype": "bfloat16"}, None) == "bf16"
    assert _matmul({}, torch.bfloat16) == "bf16"
    assert _matmul({}, None) == "fp32"
    assert (
        _matmul({"distributed.strategy": "fsdp", "distributed.fsdp.param_dtype": "bfloat16"}, None) == "bf16"
    )
    assert _matmul({"peft.method": "qlora", "model.compute_dtype": "float16"}, None) == "fp16"
    qlora = {"peft.method": "qlora", "model.compute_dtype": "bfloat16", "train.precision": "fp32"}
    assert _matmul(qlora, resolve_precision("fp32", CPU)) == "bf16"


def test_autocast_is_off_without_a_compute_dtype_even_inside_another():
    a = torch.randn(4, 4)
    with autocast(CPU, torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
        with autocast(CPU, None):
            assert (a @ a).dtype == torch.float32
