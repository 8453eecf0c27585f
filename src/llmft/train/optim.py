"""Optimizer and learning-rate schedule (the compute precision is :mod:`llmft.precision`'s)."""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from llmft.config import TrainSection
from llmft.errors import UserError

log = logging.getLogger(__name__)


def build_optimizer(model: nn.Module, cfg: TrainSection, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only; fused kernels where the device has them.

    Weight decay applies to matrices (weights, adapters), not to norms and biases, as is standard.
    Frozen parameters never reach the optimizer, so they get no optimizer state.
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    groups = [
        g
        for g in (
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        )
        if g["params"]
    ]
    if not groups:
        raise UserError("no parameter is trainable; check peft.method and its settings")
    kwargs = dict(lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    fused = device.type in {"cuda", "cpu"} and all(p.is_floating_point() for g in groups for p in g["params"])
    try:
        return torch.optim.AdamW(groups, fused=fused, **kwargs)
    except (RuntimeError, TypeError) as exc:  # older builds lack a fused kernel for this device
        log.debug("fused AdamW unavailable (%s); using the foreach implementation", exc)
        return torch.optim.AdamW(groups, **kwargs)


def warmup_steps(cfg: TrainSection, total_steps: int) -> int:
    if cfg.warmup_steps is not None:
        if cfg.warmup_steps > total_steps:
            log.warning(
                "train.warmup_steps %d is longer than the run (%d steps); warming up over the whole run",
                cfg.warmup_steps,
                total_steps,
            )
        return min(cfg.warmup_steps, total_steps)
    return int(math.ceil(cfg.warmup_ratio * total_steps))


def lr_factor(step: int, warmup: int, total: int, kind: str, min_ratio: float) -> float:
    """Multiplier of the peak lr for the optimizer step with index ``step`` (0-based).

    Linear warmup over the first ``warmup`` steps reaches the peak at the last of them (at step 0 when
    there is no warmup); no step runs at lr 0. From the peak, cosine or linear decay heads for
    ``min_ratio`` and would reach it one step after the last, as transformers' and torchtune's
    schedules do, so the peak is used once and the last step still learns. Written as one lambda (not
    transformers' schedulers) because those have no floor for linear decay and start warmup at lr 0.
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    peak = max(warmup - 1, 0)
    progress = min((step - peak) / (total - peak), 1.0)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * shape


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainSection, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = warmup_steps(cfg, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total_steps, cfg.lr_scheduler, cfg.min_lr_ratio)
    )
