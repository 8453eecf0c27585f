"""llama-recipes' training flags, translated onto ``llmft finetune`` (the ``fsdp_finetuning.py`` shim).

Only the flags given are translated; everything else keeps llmft's defaults (not llama-recipes'),
and llmft's own dotted flags (``--train.lr``) pass through unchanged. The table of flags is in
docs/distributed.md. The translation is pure (argv in, argv out) so that it is tested without a run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from llmft.errors import UserError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
# Flags that are booleans in llama-recipes: given alone they mean true (python-fire's convention).
_BOOLEAN = {
    "use_peft",
    "enable_fsdp",
    "mixed_precision",
    "fsdp_config.pure_bf16",
    "fsdp_config.fsdp_activation_checkpointing",
    "fsdp_config.fsdp_cpu_offload",
    "freeze_layers",
}
# --quantization: 4bit | 8bit in llama-recipes since 2024; a bare boolean flag (8-bit) before that.
_QUANTIZATION = {"4bit", "8bit"}
_VALUED = {
    "model_name",
    "dataset",
    "batch_size_training",
    "gradient_accumulation_steps",
    "num_epochs",
    "max_train_step",
    "lr",
    "peft_method",
    "output_dir",
    "batching_strategy",
    "context_length",
    "num_freeze_layers",
    "train_strategy",
    "seed",
    "fsdp_config.sharding_strategy",
}
# llama-recipes' --peft_method values; llmft's peft.method has the same names (and trains all of them
# under FSDP, where llama-recipes refuses llama_adapter and prefix).
_PEFT_METHODS = ("lora", "llama_adapter", "prefix")
# llama-recipes dataset names -> llmft data formats.
DATASETS = {
    "alpaca_dataset": "alpaca",
    "grammar_dataset": "grammar",
    "quotes_dataset": "quotes",
    "english_quotes": "quotes",
}
# llama-recipes' defaults, used only to complete a batch size when one of its two factors is given.
_RECIPES_MICRO_BATCH, _RECIPES_ACCUMULATION = 4, 1
# llmft's passthrough flags that are not dotted config keys.
_LLMFT_FLAGS = {"config", "overwrite", "print-config"}


def _boolean(flag: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise UserError(f"--{flag}: expected true or false, got '{value}'")


def _parse(argv: Sequence[str]) -> tuple[dict[str, str | bool], list[str]]:
    """Split argv into llama-recipes flags (name -> value) and llmft's own arguments."""
    recipes: dict[str, str | bool] = {}
    passthrough: list[str] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--"):
            raise UserError(f"unexpected argument '{token}'; flags look like --name VALUE")
        name, has_value, value = token[2:].partition("=")
        if name == "quantization":
            if not has_value and i < len(tokens) and tokens[i].lower() in _QUANTIZATION | _TRUE | _FALSE:
                value, has_value, i = tokens[i], True, i + 1
            value = value.lower() if has_value else "8bit"
            if value not in _QUANTIZATION | _TRUE | _FALSE:
                raise UserError(f"--quantization: expected 4bit or 8bit, got '{value}'")
            recipes[name] = "8bit" if value in _TRUE else False if value in _FALSE else value
        elif name in _BOOLEAN:
            if not has_value and i < len(tokens) and tokens[i].lower() in _TRUE | _FALSE:
                value, has_value, i = tokens[i], True, i + 1
            recipes[name] = _boolean(name, value) if has_value else True
        elif name in _VALUED:
            if not has_value:
                if i >= len(tokens) or tokens[i].startswith("--"):
                    raise UserError(f"--{name} needs a value")
                value, i = tokens[i], i + 1
            recipes[name] = value
        elif "." in name or name in _LLMFT_FLAGS:
            passthrough.append(token)  # llmft's own flag; its value (if any) follows as is
            while i < len(tokens) and not tokens[i].startswith("--"):
                passthrough.append(tokens[i])
                i += 1
        else:
            known = ", ".join(f"--{n}" for n in sorted(_BOOLEAN | _VALUED))
            raise UserError(
                f"unknown flag '--{name}'; the llama-recipes flags llmft maps are {known}, and any llmft "
                f"config field can be set as --section.key VALUE (see llmft finetune --help)"
            )
    return recipes, passthrough


def _dataset(name: str) -> list[str]:
    if name == "alpaca_dataset":
        # llama-recipes' PROMPT_DICT is the original Alpaca template: no newline after "### Response:".
        return ["--data.format", "alpaca", "--data.prompt_template", "alpaca_legacy"]
    if name in DATASETS:
        return ["--data.format", DATASETS[name]]
    if name == "samsum_dataset":
        raise UserError(
            "--dataset samsum_dataset: llmft does not bundle samsum; export it to JSONL and pass "
            "--data.path FILE with a matching --data.format"
        )
    if name == "custom_dataset":
        raise UserError(
            "--dataset custom_dataset: llama-recipes loads a Python file; in llmft pass "
            "--data.path FILE (JSON, JSONL, CSV or Parquet) and --data.format NAME"
        )
    return ["--data.format", name]  # an llmft format name; the config check names the known ones


def translate(argv: Sequence[str], world_size: int | None = None) -> list[str]:
    """llama-recipes style argv -> ``llmft finetune`` argv.

    Args:
        argv: the flags, without the program name.
        world_size: processes of the launch (default: ``WORLD_SIZE``, else 1); llama-recipes' batch
            size is per process and llmft's ``train.batch_size`` is global.

    Raises:
        UserError: for a flag llmft cannot honour (yet), with what to do instead.
    """
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    recipes, passthrough = _parse(argv)
    out = _quantization_and_freeze(recipes)
    strategy_args, strategy = _strategy(recipes, world_size)
    out += strategy_args
    out += _run_settings(recipes)
    out += _batch(recipes, passthrough, world_size)
    out += _method(recipes)
    out += _precision_and_memory(recipes, strategy)
    return out + passthrough


def _quantization_and_freeze(recipes: dict[str, str | bool]) -> list[str]:
    out: list[str] = []
    if recipes.get("quantization"):
        # llama-recipes' 4-bit is bitsandbytes NF4 with double quantization and bf16 compute (llmft's
        # default compute dtype is model.dtype); its 8-bit is LLM.int8. Under FSDP llmft shards the
        # 4-bit base as torchao NF4 (llama-recipes refuses quantization with FSDP).
        out += ["--model.quantization", str(recipes["quantization"])]
    if recipes.get("freeze_layers"):
        if recipes.get("use_peft"):
            # llama-recipes ignores the freeze silently with PEFT (and without FSDP); llmft says so.
            raise UserError("--freeze_layers applies to full fine-tuning; drop --use_peft or --freeze_layers")
        # llama-recipes freezes the first N decoder blocks (default 1) and leaves the embeddings trainable.
        out += ["--peft.method", "none", "--freeze.strategy", "bottom", "--freeze.train_embeddings", "true",
                "--freeze.num_frozen_layers", str(recipes.get("num_freeze_layers", 1))]  # fmt: skip
    elif "num_freeze_layers" in recipes:
        raise UserError("--num_freeze_layers needs --freeze_layers (as in llama-recipes)")
    return out


def _strategy(recipes: dict[str, str | bool], world_size: int) -> tuple[list[str], str | None]:
    """The strategy flags (--train_strategy, --enable_fsdp, the FSDP sharding strategy) and the strategy."""
    out: list[str] = []
    strategy = recipes.get("train_strategy")
    if strategy is not None and strategy not in ("single", "ddp", "fsdp"):
        raise UserError(f"--train_strategy: '{strategy}' is not one of single, ddp, fsdp")
    if "enable_fsdp" in recipes:
        implied = "fsdp" if recipes["enable_fsdp"] else "single"
        if strategy is not None and strategy != implied:
            raise UserError(
                f"--enable_fsdp {recipes['enable_fsdp']} contradicts --train_strategy {strategy}; pass one"
            )
        strategy = implied
    sharding = recipes.get("fsdp_config.sharding_strategy")
    if sharding is not None and strategy != "fsdp":
        sharding = None  # llama-recipes reads fsdp_config only with FSDP enabled
    if sharding is not None:
        out += _sharding(str(sharding), world_size)
        if sharding == "NO_SHARD":
            strategy = "ddp"
    if strategy is not None:
        out += ["--distributed.strategy", str(strategy)]
    return out, strategy


def _run_settings(recipes: dict[str, str | bool]) -> list[str]:
    """The model, epochs, learning rate, output folder, context length, seed, dataset and step limit."""
    simple = {
        "model_name": "model.name",
        "num_epochs": "train.epochs",
        "lr": "train.lr",
        "output_dir": "output_dir",
        "context_length": "data.max_seq_len",
        "seed": "train.seed",
    }
    out: list[str] = []
    for flag, key in simple.items():
        if flag in recipes:
            out += [f"--{key}", str(recipes[flag])]
    if "dataset" in recipes:
        out += _dataset(str(recipes["dataset"]))
    if recipes.get("max_train_step") not in (None, "0"):  # llama-recipes: 0 means no limit
        out += ["--train.max_steps", str(recipes["max_train_step"])]
    return out


def _batch(recipes: dict[str, str | bool], passthrough: list[str], world_size: int) -> list[str]:
    if "batch_size_training" not in recipes and "gradient_accumulation_steps" not in recipes:
        return []
    if any(t.startswith(("--train.batch_size", "--train.micro_batch_size")) for t in passthrough):
        raise UserError(
            "--batch_size_training / --gradient_accumulation_steps and --train.batch_size / "
            "--train.micro_batch_size set the same thing; pass one pair"
        )
    micro = int(recipes.get("batch_size_training", _RECIPES_MICRO_BATCH))
    accumulation = int(recipes.get("gradient_accumulation_steps", _RECIPES_ACCUMULATION))
    # llama-recipes' batch is per process and step; llmft's train.batch_size is global.
    return [
        "--train.micro_batch_size",
        str(micro),
        "--train.batch_size",
        str(micro * accumulation * world_size),
    ]


def _method(recipes: dict[str, str | bool]) -> list[str]:
    """The PEFT method: --use_peft and --peft_method (full fine-tuning with --use_peft false)."""
    use_peft = recipes.get("use_peft")
    method = recipes.get("peft_method")
    if method is not None and method not in _PEFT_METHODS:
        raise UserError(
            f"--peft_method {method}: llama-recipes' methods are {', '.join(_PEFT_METHODS)}; llmft also has "
            f"--peft.method qlora, prompt, ia3"
        )
    if use_peft is False and not recipes.get("freeze_layers"):
        return ["--peft.method", "none"]
    if use_peft or method:
        return ["--peft.method", str(method or "lora")]
    return []


def _precision_and_memory(recipes: dict[str, str | bool], strategy: str | None) -> list[str]:
    """Batching, mixed precision, pure bf16, activation checkpointing and CPU offload."""
    out: list[str] = []
    batching = recipes.get("batching_strategy")
    if batching is not None:
        out += _batching(str(batching))
    if "mixed_precision" in recipes:
        # llama-recipes: bf16 where the hardware has it; llmft's 'auto' decides the same way.
        out += ["--train.precision", "auto" if recipes["mixed_precision"] else "fp32"]
    full = recipes.get("use_peft") is False or bool(recipes.get("freeze_layers"))
    if recipes.get("fsdp_config.pure_bf16") and full:
        # llama-recipes stores a fully fine-tuned model in bf16, where small AdamW updates round away;
        # llmft keeps fp32 weights and computes in bf16 (docs/design.md: full fine-tuning keeps fp32).
        out += ["--train.precision", "bf16"]
    elif recipes.get("fsdp_config.pure_bf16"):
        out += ["--model.dtype", "bfloat16"]
        if strategy == "fsdp":
            out += ["--distributed.fsdp.param_dtype", "bfloat16"]
    if "fsdp_config.fsdp_activation_checkpointing" in recipes:
        out += [
            "--train.gradient_checkpointing",
            str(recipes["fsdp_config.fsdp_activation_checkpointing"]).lower(),
        ]
    if recipes.get("fsdp_config.fsdp_cpu_offload") and strategy == "fsdp":
        out += ["--distributed.fsdp.cpu_offload", "true"]
    return out


def _sharding(name: str, world_size: int) -> list[str]:
    """FSDP1's sharding strategies as FSDP2 options."""
    if name == "FULL_SHARD":
        return []
    if name == "SHARD_GRAD_OP":
        return ["--distributed.fsdp.reshard_after_forward", "false"]
    if name == "HYBRID_SHARD":
        # Replicate across nodes, shard inside each: as many replica groups as nodes.
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size) or world_size)
        return ["--distributed.fsdp.hsdp_replicate", str(max(1, world_size // per_node))]
    if name == "NO_SHARD":
        return []
    raise UserError(
        f"--fsdp_config.sharding_strategy: '{name}' is not one of FULL_SHARD, SHARD_GRAD_OP, "
        f"HYBRID_SHARD, NO_SHARD"
    )


def _batching(name: str) -> list[str]:
    if name not in ("padding", "packing"):
        raise UserError(f"--batching_strategy: '{name}' is not one of padding, packing")
    return ["--data.batching", name]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fsdp_finetuning.py``: translate, then run ``llmft finetune``."""
    from llmft import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    return cli.main(argv, translate=lambda tokens: ["finetune", *translate(tokens)])
