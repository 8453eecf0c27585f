"""The same run on a CUDA device: bf16 autocast where supported, fused AdamW, outputs that load.

Skipped where no CUDA device exists (this project's CI machine); run on a GPU machine with
`make test PYTEST_ARGS=tests/gpu`.
"""

from __future__ import annotations

import pytest
import torch

from llmft.config import build_config
from llmft.finetune import finetune

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is visible"),
]


def test_lora_on_cuda(tmp_path):
    cfg = build_config(
        {},
        {
            "train.max_steps": 20,
            "train.lr": 1e-3,
            "train.progress": False,
            "logging.tensorboard": False,
            "generation.max_new_tokens": 4,
            "output_dir": str(tmp_path / "run"),
        },
    )
    result = finetune(cfg)
    assert result.device.startswith("cuda")
    assert result.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert next(p for p in result.model.parameters() if p.requires_grad).device.type == "cuda"
    losses = result.summary.losses
    assert all(torch.isfinite(torch.tensor(losses))) and sum(losses[-5:]) < sum(losses[:5])
    assert (result.output_dir / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("options", [[], ["--distributed.fsdp.cpu_offload", "true"]], ids=["fsdp", "offload"])
def test_fsdp_on_cuda_with_nccl(tmp_path, options):
    """FSDP2 on the GPUs present (nccl), as many processes as devices (at least one)."""
    import json

    from helpers import run_torchrun

    out = tmp_path / "run"
    result = run_torchrun(
        max(1, min(torch.cuda.device_count(), 2)), "-m", "llmft", "finetune", "--distributed.strategy", "fsdp",
        *options, "--train.max_steps", "4", "--train.progress", "false", "--logging.tensorboard", "false",
        "--generation.max_new_tokens", "4", "--output_dir", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] is not None for r in rows if "loss" in r)
    assert (out / "adapter_model.safetensors").is_file() and "on cuda" in (out / "train.log").read_text()


@pytest.mark.parametrize(
    "overrides",
    [
        {"peft.method": "qlora"},
        {"peft.method": "lora", "model.quantization": "8bit"},
        {"peft.method": "qlora", "model.quant_backend": "torchao"},
    ],
    ids=["bnb-4bit", "bnb-8bit", "torchao-nf4"],
)
def test_quantized_base_on_cuda(tmp_path, overrides):
    """QLoRA's bases on the GPU: bitsandbytes' CUDA kernels (4-bit, 8-bit) and torchao's NF4."""
    pytest.importorskip("bitsandbytes")
    cfg = build_config(
        {},
        {
            **overrides,
            "train.max_steps": 20,
            "train.lr": 1e-3,
            "train.progress": False,
            "logging.tensorboard": False,
            "generation.max_new_tokens": 4,
            "output_dir": str(tmp_path / "run"),
        },
    )
    result = finetune(cfg)
    assert result.device.startswith("cuda")
    losses = result.summary.losses
    assert all(torch.isfinite(torch.tensor(losses))) and sum(losses[-5:]) < sum(losses[:5])
    assert (result.output_dir / "adapter_model.safetensors").is_file()
