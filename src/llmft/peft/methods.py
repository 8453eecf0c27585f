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

from torch import nn

from llmft.config import PeftSection
from llmft.errors import UserError

log = logging.getLogger(__name__)

_METHODS: dict[str, Callable[..., nn.Module]] = {}


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
def _full(model: nn.Module, cfg: PeftSection, task: str = "causal_lm") -> nn.Module:
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def _lora_target_problem(model: nn.Module, cfg: PeftSection) -> str | None:
    targets = cfg.lora.target_modules
    if not isinstance(targets, list):
        return None  # 'all-linear': PEFT picks them
    available = linear_module_names(model)
    missing = [name for name in targets if name not in available]
    if not missing:
        return None
    return (
        f"peft.lora.target_modules: {', '.join(repr(m) for m in missing)} matches no linear layer of the "
        f"model; its linear layers are: {', '.join(available)} (or use 'all-linear')"
    )


# Checks of a method against the model, runnable on a weightless (meta-device) copy.
_CHECKS: dict[str, Callable[[nn.Module, PeftSection], str | None]] = {"lora": _lora_target_problem}


def check_method(model: nn.Module, cfg: PeftSection) -> None:
    """Raise a UserError if ``cfg`` cannot apply to ``model`` (which may live on the meta device)."""
    check = _CHECKS.get(cfg.method)
    problem = check(model, cfg) if check else None
    if problem:
        raise UserError(problem)


@register("lora")
def _lora(model: nn.Module, cfg: PeftSection, task: str = "causal_lm") -> nn.Module:
    from peft import LoraConfig, get_peft_model

    check_method(model, cfg)
    lora = cfg.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias=lora.bias,
        # SEQ_CLS: PEFT also trains and saves the classifier head (``score``) in full.
        task_type="SEQ_CLS" if task == "classification" else "CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft calls a transformers method that transformers 5 deprecates; nothing for users to do.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def apply_method(model: nn.Module, cfg: PeftSection, task: str = "causal_lm") -> nn.Module:
    """Apply ``cfg.method`` to ``model`` (of ``task``) and return the model to train."""
    return _METHODS[cfg.method](model, cfg, task)


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
