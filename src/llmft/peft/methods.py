"""Parameter-efficient methods, chosen by name (``peft.method``), applied through HF PEFT.

A method is a model transform: it takes the loaded model and returns the model to train, with exactly
the parameters that should train marked ``requires_grad``. ``none`` trains every weight (full
fine-tuning).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from llmft.config import PeftSection
from llmft.errors import UserError

log = logging.getLogger(__name__)

_METHODS: dict[str, Callable[[nn.Module, PeftSection], nn.Module]] = {}


def register(name: str):
    def wrap(fn: Callable[[nn.Module, PeftSection], nn.Module]):
        _METHODS[name] = fn
        return fn

    return wrap


def linear_module_names(model: nn.Module) -> list[str]:
    """Short names (last path component) of the model's linear layers, e.g. q_proj, down_proj."""
    names = {
        name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)
    }
    return sorted(names)


@register("none")
def _full(model: nn.Module, cfg: PeftSection) -> nn.Module:
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


@register("lora")
def _lora(model: nn.Module, cfg: PeftSection) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    if isinstance(lora.target_modules, list):
        # Check names against the model before PEFT does, so the error can list what exists.
        available = linear_module_names(model)
        missing = [name for name in lora.target_modules if name not in available]
        if missing:
            raise UserError(
                f"peft.lora.target_modules: {', '.join(repr(m) for m in missing)} matches no linear layer "
                f"of the model; its linear layers are: {', '.join(available)} (or use 'all-linear')"
            )
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias=lora.bias,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft calls a transformers method that transformers 5 deprecates; nothing for users to do.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def apply_method(model: nn.Module, cfg: PeftSection) -> nn.Module:
    """Apply ``cfg.method`` to ``model`` and return the model to train."""
    try:
        transform = _METHODS[cfg.method]
    except KeyError:
        raise UserError(f"peft.method: unknown method {cfg.method!r}; known: {', '.join(_METHODS)}") from None
    return transform(model, cfg)


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    def describe(self) -> str:
        share = 100.0 * self.trainable / max(self.total, 1)
        return f"trainable parameters: {self.trainable:,} of {self.total:,} ({share:.2f}%)"


def count_parameters(model: nn.Module) -> ParameterCount:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return ParameterCount(trainable, total)


def trainable_parameters(model: nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]
