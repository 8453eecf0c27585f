"""Process layout: one process today, and a clear refusal of launches it cannot serve."""

from __future__ import annotations

import pytest
import torch

from llmft.config import DistributedSection
from llmft.distributed.env import resolve_device, setup_distributed
from llmft.errors import UserError


def test_single_process_on_cpu(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    env = setup_distributed(DistributedSection(device="cpu"))
    assert (env.rank, env.world_size, env.is_main, env.device) == (0, 1, True, torch.device("cpu"))
    assert env.sum(torch.tensor(3)) == 3


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
def test_multi_process_launch_is_refused(monkeypatch, world, message):
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(UserError, match=message):
        setup_distributed(DistributedSection(device="cpu"))
