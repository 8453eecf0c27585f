"""The process layout of a run: rank, world size, device, process group and device mesh.

A run is one process (``single``) or one of ``WORLD_SIZE`` processes started by torchrun (``ddp``,
``fsdp``), which sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``.
The launch is checked in two parts: :func:`check_launch` needs only the environment and the config, so
a wrong launch is reported before any work and before the processes wait for each other;
:func:`setup_distributed` then joins the process group (nccl on CUDA, gloo on CPU).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from llmft.config import DistributedSection
from llmft.errors import UserError

log = logging.getLogger(__name__)

# How to start several processes; named in every error about a missing process group.
TORCHRUN_HINT = "torchrun --nproc_per_node N -m llmft finetune ..."


def torchrun_hint() -> str:
    """:data:`TORCHRUN_HINT`, or the same launch of the script this process runs (a shim such as
    ``fsdp_finetuning.py``, whose users pass its flags, not ``llmft finetune``'s)."""
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if script.endswith(".py") and script != "__main__.py":
        return f"torchrun --nproc_per_node N {script} ..."
    return TORCHRUN_HINT


# Whether llmft started the process group (and so may end it): a caller's own group is left alone.
_owns_process_group = False


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    strategy: str = "single"
    # The FSDP mesh: 1-D (shard) or 2-D (replicate, shard) for HSDP; None for single and DDP.
    mesh: object | None = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        """Only the main process logs, draws progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group exists (ddp and fsdp, even with one process)."""
        return self.strategy != "single"

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes (the identity for one process)."""
        if not self.distributed:
            return value
        # nccl reduces only tensors on the GPU, gloo those on the CPU: the device of the run serves both.
        total = value.detach().to(self.device, copy=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on any process (a stop request that one rank received, say)."""
        if not self.distributed:
            return flag
        value = torch.tensor(int(flag), device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value)

    def barrier(self) -> None:
        """Wait until every process arrives (a no-op for one process)."""
        if self.distributed:
            dist.barrier()


def resolve_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "distributed.device: 'cuda' was asked for but no CUDA device is visible; use 'auto' or 'cpu'"
        )
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def _env_int(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"{name} '{raw}' is not a number; unset it, or launch with torchrun") from None


def launched_world_size() -> int:
    """The number of processes this one was launched with (``WORLD_SIZE``; 1 when unset)."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size < 1:
        raise UserError(f"WORLD_SIZE {world_size} must be at least 1; unset it, or launch with torchrun")
    return world_size


def check_launch(cfg: DistributedSection) -> int:
    """Check the launch against ``cfg`` from the environment alone; returns the world size.

    Raises a UserError, before any process waits for another, for: several processes with strategy
    ``single``; ``ddp``/``fsdp`` without torchrun's environment; an HSDP replica count that does not
    divide the world size; a CUDA device asked for where none is visible.
    """
    world_size = launched_world_size()
    resolve_device(cfg.device)
    if cfg.strategy == "single" and world_size > 1:
        raise UserError(
            f"distributed.strategy: launched as {world_size} processes (WORLD_SIZE={world_size}, e.g. by "
            f"torchrun) but strategy 'single' runs one process; add --distributed.strategy fsdp (or ddp), "
            f"or launch with plain `llmft finetune`"
        )
    if cfg.strategy != "single" and "WORLD_SIZE" not in os.environ:
        raise UserError(
            f"distributed.strategy: '{cfg.strategy}' needs a process group, and this process was not "
            f"started by torchrun (WORLD_SIZE is not set); launch with `{torchrun_hint()}`, or use "
            f"--distributed.strategy single"
        )
    if cfg.strategy == "fsdp" and cfg.fsdp.param_dtype == "float16":
        # fp16's narrow range needs loss scaling (a sharded GradScaler), which llmft does not do:
        # small gradients would flush to zero unseen. bf16 has fp32's range and needs none.
        raise UserError(
            "distributed.fsdp.param_dtype: float16 training needs loss scaling, which llmft does not do "
            "(gradients would underflow); use --distributed.fsdp.param_dtype bfloat16 (same memory, "
            "float32's range), or float32"
        )
    replicate = cfg.fsdp.hsdp_replicate
    if cfg.strategy == "fsdp" and world_size % replicate:
        raise UserError(
            f"distributed.fsdp.hsdp_replicate: {replicate} replica groups do not divide the world size "
            f"{world_size}; use a divisor of {world_size} (usually the number of nodes), or 1 for plain FSDP"
        )
    return world_size


def setup_distributed(cfg: DistributedSection) -> DistEnv:
    """The layout for ``cfg.strategy``; joins the process group for ``ddp`` and ``fsdp``."""
    world_size = check_launch(cfg)
    device = resolve_device(cfg.device)
    if cfg.strategy == "single":
        if device.type == "cuda":
            torch.cuda.set_device(device.index or 0)
        return DistEnv(rank=0, world_size=1, local_rank=0, device=device)

    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        global _owns_process_group
        # On GPUs nccl carries the training collectives; gloo serves the few on CPU tensors (rank 0's
        # weights broadcast into CPU-offloaded shards, Python objects).
        dist.init_process_group(backend="cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo")
        _owns_process_group = True
    mesh = None
    if cfg.strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        replicate = cfg.fsdp.hsdp_replicate
        if replicate > 1:  # HSDP: replicate across the groups (nodes), shard inside each
            mesh = init_device_mesh(
                device.type, (replicate, world_size // replicate), mesh_dim_names=("replicate", "shard")
            )
        else:
            mesh = init_device_mesh(device.type, (world_size,), mesh_dim_names=("shard",))
    env = DistEnv(rank, world_size, local_rank, device, cfg.strategy, mesh)
    if not env.is_main:
        _quiet_non_main()
    return env


def _quiet_non_main() -> None:
    """Only rank 0 reports progress: the other ranks keep warnings and errors."""
    logging.getLogger("llmft").setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def teardown_distributed(wait: bool = True) -> None:
    """Leave the process group that :func:`setup_distributed` started (a no-op for one process).

    Args:
        wait: meet the other ranks first, so none leaves while another still talks to it; False after
            an error, where the others may never arrive.
    """
    global _owns_process_group
    if _owns_process_group and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
    _owns_process_group = False
