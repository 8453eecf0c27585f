"""The rules of a config: combinations of fields that cannot work, each reported with its fix.

A rule reads fields that pydantic has already checked one by one and returns its problems as one-line
messages that name every field involved; no rule stops at the first problem, so
:func:`llmft.config.loader.build_config` reports all of a config's problems in one ``ConfigError``.
Rules across sections read the *resolved* config (:func:`llmft.config.resolve.resolve_defaults`): a
``qlora`` run has its 4-bit base and a 4-bit base its backend before they are checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmft.config.inputs import DataSection, ModelSection
from llmft.config.run import DistributedSection, FsdpSection, TrainSection
from llmft.config.schema import Config
from llmft.config.tuning import PROMPT_METHODS, FreezeSection, HeadSection


def batch_problem(batch_size: int, micro_batch_size: int, world_size: int = 1) -> str | None:
    """Why a global batch cannot be split into micro-batches over ``world_size`` processes, or None."""
    per_step = micro_batch_size * world_size
    if batch_size % per_step == 0:
        return None
    suggestion = max(1, round(batch_size / per_step)) * per_step
    over = (
        f" x world size ({micro_batch_size} x {world_size} = {per_step})"
        if world_size > 1
        else f" ({per_step})"
    )
    return (
        f"train.batch_size ({batch_size}) must be a multiple of train.micro_batch_size{over}; "
        f"e.g. --train.batch_size {suggestion}"
    )


def _apply(fields: list[str]) -> tuple[str, str]:
    """('apply', 'them') or ('applies', 'it'): the verb and pronoun for a list of field names."""
    return ("apply", "them") if len(fields) > 1 else ("applies", "it")


# ---------------------------------------------------------------------------------------------------
# Rules within one section: they need only that section, so they also run where another section has a
# wrong field (see section_problems).


def data_problems(data: DataSection) -> list[str]:
    if data.group_by_length and data.batching == "packing":
        return [
            "data.group_by_length applies to padding; packed rows all have max_seq_len tokens - "
            "drop group_by_length or use --data.batching padding"
        ]
    return []


def train_problems(train: TrainSection) -> list[str]:
    problem = batch_problem(train.batch_size, train.micro_batch_size)
    return [problem] if problem else []


def distributed_problems(distributed: DistributedSection) -> list[str]:
    # Compared with the defaults, not with the fields set: a written run config lists them all.
    changed = [name for name, value in distributed.fsdp if value != FsdpSection.model_fields[name].default]
    if distributed.strategy == "fsdp" or not changed:
        return []
    fields = ", ".join(f"distributed.fsdp.{name}" for name in changed)
    verb, pronoun = _apply(changed)
    return [
        f"{fields} {verb} only to strategy fsdp (strategy is '{distributed.strategy}'); add "
        f"--distributed.strategy fsdp or drop {pronoun}"
    ]


def freeze_problems(freeze: FreezeSection) -> list[str]:
    problems = []
    strategy = freeze.strategy
    layers = (freeze.num_frozen_layers, freeze.num_trainable_layers)
    if strategy == "bottom" and sum(n is not None for n in layers) != 1:
        problems.append(
            "freeze.strategy bottom needs exactly one of freeze.num_frozen_layers (e.g. 28) or "
            "freeze.num_trainable_layers (e.g. 4)"
        )
    if strategy != "bottom" and any(n is not None for n in layers):
        problems.append(
            f"freeze.num_frozen_layers / num_trainable_layers apply to strategy bottom (strategy is "
            f"'{strategy}'); add --freeze.strategy bottom"
        )
    if strategy == "patterns" and not (freeze.include or freeze.exclude):
        problems.append("freeze.strategy patterns needs freeze.include or freeze.exclude regular expressions")
    if strategy != "patterns" and (freeze.include or freeze.exclude):
        problems.append("freeze.include / exclude apply to strategy patterns; add --freeze.strategy patterns")
    if strategy not in ("bottom", "head_only") and (freeze.train_norms or freeze.train_embeddings):
        problems.append(
            f"freeze.train_norms / train_embeddings apply to strategies bottom and head_only (strategy is "
            f"'{strategy}'); add --freeze.strategy bottom or head_only"
            + (" (patterns: add the norms or embeddings to freeze.include)" if strategy == "patterns" else "")
        )
    return problems


def head_problems(head: HeadSection) -> list[str]:
    # Compared with the defaults, not model_fields_set: classifier.json records every field.
    changed = [
        name
        for name in ("num_layers", "width", "activation", "dropout")
        if getattr(head, name) != HeadSection.model_fields[name].default
    ]
    if head.type == "mlp" or not changed:
        return []
    verb, pronoun = _apply(changed)
    return [
        f"head.{' / '.join(changed)} {verb} to head.type mlp (type is '{head.type}'); add --head.type mlp "
        f"or leave {pronoun} out"
    ]


# Config field -> the rule of that section.
SECTION_RULES: dict[str, Callable[[Any], list[str]]] = {
    "data": data_problems,
    "train": train_problems,
    "distributed": distributed_problems,
    "freeze": freeze_problems,
    "head": head_problems,
}


def section_problems(name: str, section: Any) -> list[str]:
    """The problems of Config field ``name`` (a section) on its own; [] for a section without rules."""
    rule = SECTION_RULES.get(name)
    return rule(section) if rule else []


# ---------------------------------------------------------------------------------------------------
# Rules across sections.


def full_finetune_dtype_problems(config: Config) -> list[str]:
    dtype = config.model.dtype
    if config.peft.method == "none" and dtype != "float32":
        return [
            f"model.dtype {dtype} with peft.method none would train {dtype} weights directly, and most "
            f"small updates round away; keep model.dtype float32 and use train.precision bf16 (autocast "
            f"computes in bf16 and keeps fp32 master weights)"
        ]
    return []


def task_problems(config: Config) -> list[str]:
    problems = []
    if config.freeze.strategy != "none" and config.peft.method != "none":
        problems.append(
            f"freeze.strategy {config.freeze.strategy} chooses which of the model's own weights train, so it "
            f"needs peft.method none (now '{config.peft.method}', whose adapters decide what trains)"
        )
    if config.task == "causal_lm" and config.head != HeadSection():
        problems.append(
            "head.* configures the classifier of task classification; a causal LM has no such head - "
            "add --task classification or drop the head settings"
        )
    if config.task == "classification" and config.data.format != "classification":
        problems.append(
            f"task classification reads text and label records: use data.format classification "
            f"(now '{config.data.format}'; rename columns with data.column_map)"
        )
    if config.task == "classification" and config.data.batching == "packing":
        problems.append("task classification pools one text per row: use data.batching padding")
    return problems


def quantization_problems(config: Config) -> list[str]:
    """A quantized base against the method and the strategy (the 4-bit backend's own: torchao_problems)."""
    problems = []
    model, method, strategy = config.model, config.peft.method, config.distributed.strategy
    if method == "qlora" and model.quantization == "none":  # resolved: none here is the user's
        problems.append(
            "peft.method qlora is LoRA on a quantized base, but model.quantization is none; "
            "use --peft.method lora, or --model.quantization 4bit"
        )
    if model.quantization != "none" and method == "none":
        problems.append(
            f"model.quantization {model.quantization} freezes the base in {model.quantization}, so "
            f"peft.method none has nothing to train; pick a PEFT method (e.g. --peft.method lora)"
        )
    four_bit_only = ("quant_type", "double_quant", "compute_dtype", "quant_backend")
    changed = [
        f"model.{name}"
        for name in four_bit_only
        if getattr(model, name) != ModelSection.model_fields[name].default
    ]
    if model.quantization != "4bit" and changed:
        problems.append(
            f"{', '.join(changed)} apply to model.quantization 4bit (now {model.quantization}); "
            f"add --model.quantization 4bit or drop them"
        )
    if strategy == "fsdp" and model.quantization == "8bit":
        problems.append(
            "model.quantization 8bit cannot be sharded by FSDP (bitsandbytes' int8 weights carry "
            "row-wise state FSDP2 cannot split); use --model.quantization 4bit (sharded as torchao NF4) "
            "or --distributed.strategy ddp"
        )
    wrong_strategy = "fsdp" if model.quant_backend == "bitsandbytes" else "ddp"
    if model.quantization == "4bit" and model.quant_backend != "auto" and strategy == wrong_strategy:
        problems.append(
            f"model.quant_backend {model.quant_backend} under strategy {strategy}: FSDP shards "
            f"torchao's NF4 and DDP replicates bitsandbytes' 4-bit weights; use --model.quant_backend auto"
        )
    return problems


def torchao_problems(config: Config) -> list[str]:
    """What torchao's NF4 (FSDP's 4-bit base) cannot do."""
    model = config.model
    if model.quantization != "4bit" or model.quant_backend != "torchao":
        return []
    problems = []
    if model.quant_type != "nf4":
        problems.append(
            f"model.quant_type {model.quant_type} with torchao (FSDP's 4-bit base): it has only "
            f"NF4; use --model.quant_type nf4, or bitsandbytes (--distributed.strategy ddp)"
        )
    if not model.double_quant:
        problems.append(
            "model.double_quant false with torchao (FSDP's 4-bit base): its NF4 always quantizes "
            "the block scales; drop model.double_quant, or use bitsandbytes (--distributed.strategy ddp)"
        )
    if config.peft.method in ("lora", "qlora") and config.peft.lora.use_dora:
        problems.append(
            "peft.lora.use_dora on torchao's 4-bit base (FSDP's): PEFT cannot dequantize its NF4 "
            "weight for DoRA's norm; drop use_dora, or use bitsandbytes (--distributed.strategy ddp)"
        )
    return problems


def peft_method_problems(config: Config) -> list[str]:
    """Prompt-like methods against packing and classification; IA3's two module lists."""
    problems = []
    method = config.peft.method
    if method in PROMPT_METHODS and config.data.batching == "packing":
        problems.append(
            f"peft.method {method} puts its virtual tokens before every row, so packed documents "
            f"would all attend to one prompt and share position ids; use --data.batching padding"
        )
    if method in PROMPT_METHODS and config.task == "classification":
        problems.append(
            f"peft.method {method} with task classification: the classifier pools the last real "
            f"token, which virtual tokens shift; use lora or ia3 for classification"
        )
    if method == "ia3":
        targets, feedforward = config.peft.ia3.target_modules, config.peft.ia3.feedforward_modules
        extra = [name for name in feedforward if isinstance(targets, list) and name not in targets]
        if extra:
            problems.append(
                f"peft.ia3.feedforward_modules {extra} are not in peft.ia3.target_modules {targets}; "
                f"add them there or drop them"
            )
    return problems


# Rules across sections, in the order their problems are listed.
CONFIG_RULES: tuple[Callable[[Config], list[str]], ...] = (
    full_finetune_dtype_problems,
    task_problems,
    quantization_problems,
    torchao_problems,
    peft_method_problems,
)


def config_problems(config: Config) -> list[str]:
    """Every problem of a resolved config whose fields are valid: each section's, then across sections."""
    problems = [p for name in SECTION_RULES for p in section_problems(name, getattr(config, name))]
    return problems + [p for rule in CONFIG_RULES for p in rule(config)]
