"""The process layout of a run: rank, world size and device.

Today a run is one process on one device. The trainer already takes its rank, world size and a sum
over ranks from here, so that data-parallel strategies plug in without a second training loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from llmft.config import DistributedSection
from llmft.errors import UserError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process logs, draws progress and writes files."""
        return self.rank == 0

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes (the identity for one process)."""
        return value


def resolve_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "distributed.device: 'cuda' was asked for but no CUDA device is visible; use 'auto' or 'cpu'"
        )
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def setup_distributed(cfg: DistributedSection) -> DistEnv:
    """The layout for ``cfg.strategy``; refuses a multi-process launch it cannot serve."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        world_size = int(raw)
    except ValueError:
        raise UserError(f"WORLD_SIZE '{raw}' is not a number; unset it, or launch with torchrun") from None
    if world_size > 1:
        raise UserError(
            f"distributed.strategy: launched as {world_size} processes (WORLD_SIZE={world_size}, e.g. by "
            f"torchrun) but strategy '{cfg.strategy}' runs one process; launch with plain `llmft finetune`"
        )
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
    return DistEnv(rank=0, world_size=1, local_rank=0, device=device)
