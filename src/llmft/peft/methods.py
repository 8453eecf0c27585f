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


def _target_problem(model: nn.Module, field: str, targets) -> str | None:
    if not isinstance(targets, list):
        return None  # 'all-linear': PEFT picks them
    available = linear_module_names(model)
    missing = [name for name in targets if name not in available]
    if not missing:
        return None
    return (
        f"{field}: {', '.join(repr(m) for m in missing)} matches no linear layer of the "
        f"model; its linear layers are: {', '.join(available)} (or use 'all-linear')"
    )


def _lora_target_problem(model: nn.Module, cfg: PeftSection) -> str | None:
    return _target_problem(model, "peft.lora.target_modules", cfg.lora.target_modules)


def _ia3_target_problem(model: nn.Module, cfg: PeftSection) -> str | None:
    return _target_problem(model, "peft.ia3.target_modules", cfg.ia3.target_modules)


def _llama_adapter_problem(model: nn.Module, cfg: PeftSection) -> str | None:
    from peft.tuners.adaption_prompt.config import TRANSFORMERS_MODEL_CONFIG

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in TRANSFORMERS_MODEL_CONFIG:
        return (
            f"peft.method llama_adapter: PEFT's adaption prompt supports model types "
            f"{', '.join(sorted(TRANSFORMERS_MODEL_CONFIG))}, not '{model_type}'; use lora or prefix"
        )
    return None


# Checks of a method against the model, runnable on a weightless (meta-device) copy.
_CHECKS: dict[str, Callable[[nn.Module, PeftSection], str | None]] = {
    "lora": _lora_target_problem,
    "qlora": _lora_target_problem,
    "ia3": _ia3_target_problem,
    "llama_adapter": _llama_adapter_problem,
}


def check_method(model: nn.Module, cfg: PeftSection) -> None:
    """Raise a UserError if ``cfg`` cannot apply to ``model`` (which may live on the meta device)."""
    check = _CHECKS.get(cfg.method)
    problem = check(model, cfg) if check else None
    if problem:
        raise UserError(problem)


def _task_type(task: str) -> str:
    # SEQ_CLS: PEFT also trains and saves the classifier head (``score``) in full.
    return "SEQ_CLS" if task == "classification" else "CAUSAL_LM"


def _peft_model(model: nn.Module, config) -> nn.Module:
    from peft import get_peft_model

    from llmft.models.quantize import is_bnb_quantized, prepare_kbit

    with warnings.catch_warnings():
        # peft calls a transformers method that transformers 5 deprecates; nothing for users to do.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        if is_bnb_quantized(model):  # torchao NF4 (FSDP) keeps model.dtype elsewhere, as torchtune does
            model = prepare_kbit(model)
        return get_peft_model(model, config)


@register("lora")
@register("qlora")  # LoRA on the quantized base that model.quantization asked for (4bit by default)
def _lora(model: nn.Module, cfg: PeftSection, task: str = "causal_lm") -> nn.Module:
    from peft import LoraConfig

    check_method(model, cfg)
    lora = cfg.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias=lora.bias,
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
        task_type=_task_type(task),
    )
    return _peft_model(model, config)


@register("ia3")
def _ia3(model: nn.Module, cfg: PeftSection, task: str = "causal_lm") -> nn.Module:
    from peft import IA3Config

    check_method(model, cfg)
    targets = cfg.ia3.target_modules
    config = IA3Config(
        target_modules=targets,
        # With 'all-linear' PEFT wants the feed-forward set among the linear layers it finds.
        feedforward_modules=cfg.ia3.feedforward_modules,
        task_type=_task_type(task),
    )
    return _peft_model(model, config)


@register("prefix")
def _prefix(model: nn.Module, cfg: PeftSection, task: str = "causal_lm") -> nn.Module:
    from peft import PrefixTuningConfig

    prefix = cfg.prefix
    config = PrefixTuningConfig(
        num_virtual_tokens=prefix.num_virtual_tokens,
        prefix_projection=prefix.prefix_projection,
        encoder_hidden_size=prefix.encoder_hidden_size or model.config.hidden_size,
        task_type=_task_type(task),
    )
    return _peft_model(model, config)


@register("prompt")
def _prompt(model: nn.Module, cfg: PeftSection, task: str = "causal_lm") -> nn.Module:
    from peft import PromptTuningConfig

    prompt = cfg.prompt
    text = {}
    if prompt.init_text:
        # PEFT tokenizes the text with the model's own tokenizer (from the model's folder).
        text = {
            "prompt_tuning_init": "TEXT",
            "prompt_tuning_init_text": prompt.init_text,
            "tokenizer_name_or_path": model.config.name_or_path,
        }
    config = PromptTuningConfig(
        num_virtual_tokens=prompt.num_virtual_tokens, task_type=_task_type(task), **text
    )
    return _peft_model(model, config)


@register("llama_adapter")
def _llama_adapter(model: nn.Module, cfg: PeftSection, task: str = "causal_lm") -> nn.Module:
    from peft import AdaptionPromptConfig

    check_method(model, cfg)
    adapter = cfg.llama_adapter
    layers = min(adapter.adapter_layers, model.config.num_hidden_layers)
    config = AdaptionPromptConfig(
        adapter_len=adapter.adapter_len, adapter_layers=layers, task_type=_task_type(task)
    )
    peft_model = _peft_model(model, config)
    # PEFT's AdaptionPromptModel binds the inner model's bound ``forward``, which skips that module's
    # hooks, FSDP's all-gather among them; calling the module itself runs them.
    adaption = peft_model.base_model
    adaption.forward = adaption.model.__call__
    return peft_model


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
