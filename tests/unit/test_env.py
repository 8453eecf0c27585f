"""Process layout: the launch checks (from the environment alone) and the one-process layout.

Multi-process runs themselves are tested for real in tests/distributed.
"""

from __future__ import annotations

import pytest
import torch

from llmft.config import DistributedSection, FsdpSection, build_config
from llmft.distributed.env import check_launch, resolve_device, setup_distributed
from llmft.errors import ConfigError, UserError


def test_single_process_on_cpu(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    env = setup_distributed(DistributedSection(device="cpu"))
    assert (env.rank, env.world_size, env.is_main, env.device) == (0, 1, True, torch.device("cpu"))
    assert not env.distributed and env.sum(torch.tensor(3)) == 3


def test_auto_device_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="distributed.device: 'cuda' was asked for but no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the one thing this machine lacks
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize(
    ("world", "message"), [("2", "launched as 2 processes"), ("x", "WORLD_SIZE 'x' is not a number")]
)
def test_single_strategy_refuses_a_multi_process_launch(monkeypatch, world, message):
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(UserError, match=message):
        setup_distributed(DistributedSection(device="cpu"))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_data_parallel_needs_torchrun(monkeypatch, strategy):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(UserError, match=f"'{strategy}' needs a process group.*torchrun --nproc_per_node N"):
        check_launch(DistributedSection(strategy=strategy))
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: a valid (if small) group
    assert check_launch(DistributedSection(strategy=strategy)) == 1


def test_hsdp_replicas_must_divide_the_world(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert check_launch(DistributedSection(strategy="fsdp", fsdp=FsdpSection(hsdp_replicate=2))) == 8
    with pytest.raises(UserError, match="3 replica groups do not divide the world size 8; use a divisor"):
        check_launch(DistributedSection(strategy="fsdp", fsdp=FsdpSection(hsdp_replicate=3)))


def test_fsdp_options_need_the_fsdp_strategy():
    one = r"distributed.fsdp.cpu_offload applies only to strategy fsdp \(strategy is 'single'\); .* drop it$"
    with pytest.raises(ConfigError, match=one):
        build_config({}, {"distributed.fsdp.cpu_offload": True})
    # A written run config lists every field at its default: that is no mistake.
    written = build_config({}, {}).model_dump(mode="json")
    assert build_config(written, {}).distributed.strategy == "single"


def test_fsdp_float16_is_refused_for_want_of_loss_scaling_and_bfloat16_is_not(monkeypatch):
    """No GradScaler: fp16 gradients of small losses flush to zero unseen, so fp16 compute is refused
    (train.precision offers only fp32 and bf16 for the same reason)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(
        UserError, match="param_dtype: float16 training needs loss scaling.*param_dtype bfloat16"
    ):
        check_launch(DistributedSection(strategy="fsdp", fsdp=FsdpSection(param_dtype="float16")))
    assert check_launch(DistributedSection(strategy="fsdp", fsdp=FsdpSection(param_dtype="bfloat16"))) == 2
    with pytest.raises(ConfigError, match="train.precision"):
        build_config({}, {"train.precision": "fp16"})
