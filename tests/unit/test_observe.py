"""Per-step observability: FLOPs per token from the shape, device peaks, the W&B switch."""

from __future__ import annotations

import sys

import pytest

from llmft.cli import main
from llmft.errors import UserError
from llmft.memory.architectures import KNOWN_ARCHITECTURES
from llmft.memory.flops import flops_model
from llmft.memory.params import MethodSpec, inventory
from llmft.train.metrics import check_wandb
from llmft.train.observe import gpu_peak_flops

SHAPE = KNOWN_ARCHITECTURES["llama-2-7b"]


def _matmul_params(inv) -> int:
    return sum(
        t.numel for t in inv.tensors if len(t.shape) == 2 and t.name != "embed_tokens" and not t.adapter
    )


def test_full_finetuning_is_6n_plus_attention():
    inv = inventory(SHAPE, MethodSpec("full"), "fp32")
    model = flops_model(SHAPE, inv)
    assert model.dense == 6 * _matmul_params(inv)
    # 12 x layers x q_dim per position: PaLM's 12 L H T (no causal discount).
    assert model.attention_per_position == 12 * SHAPE.num_layers * SHAPE.q_dim


def test_a_frozen_base_is_4n_plus_6_per_adapter_parameter():
    inv = inventory(SHAPE, MethodSpec("lora"), "bf16")
    model = flops_model(SHAPE, inv)
    assert model.dense == 4 * _matmul_params(inv) + 6 * inv.count(trainable_only=True)


def test_frozen_bottom_blocks_cost_their_forward_only():
    frozen = flops_model(SHAPE, inventory(SHAPE, MethodSpec("full", num_frozen_layers=16), "fp32"))
    full = flops_model(SHAPE, inventory(SHAPE, MethodSpec("full"), "fp32"))
    block = sum(o * i for o, i in SHAPE.linear_shapes().values())
    assert full.dense - frozen.dense == 16 * 4 * block  # no input or weight gradients in 16 blocks
    assert full.attention_per_position - frozen.attention_per_position == 16 * 8 * SHAPE.q_dim


@pytest.mark.parametrize(
    ("name", "precision", "tflops"),
    [("NVIDIA H100 80GB HBM3", "bf16", 989), ("NVIDIA H100 PCIe", "bf16", 756), ("NVIDIA H200", "bf16", 989),
     ("NVIDIA A100-SXM4-80GB", "bf16", 312), ("NVIDIA A100-SXM4-80GB", "fp32", 19.5), ("NVIDIA L4", "bf16", 121),
     ("NVIDIA GeForce RTX 4090", "bf16", 165.2), ("Some Future GPU", "bf16", None)],
)  # fmt: skip
def test_gpu_peaks(name, precision, tflops):
    peak = gpu_peak_flops(name, precision)
    assert peak == (tflops * 1e12 if tflops else None)


def test_wandb_enabled_without_wandb_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    # wandb is in the test extra; a None entry in sys.modules makes `import wandb` fail as if absent.
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match="logging.wandb: true, but wandb is not installed; pip install wandb"):
        check_wandb(True)
    check_wandb(False)
    assert main(["finetune", "--logging.wandb", "true", "--output_dir", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wandb is not installed" in err
    assert not (tmp_path / "never").exists()
