"""The schema of a run: one pydantic model per config section.

Unknown keys are errors (``extra="forbid"``); numbers accept numeric text (YAML reads ``1e-4`` as
text) but never ``true``/``false``; checks that span fields raise messages that name every field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from llmft.format_names import format_problem


def _not_a_bool(value: Any) -> Any:
    # pydantic would read true as 1: a forgotten value (`--train.lr` alone) must not become lr 1.0.
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


Int = Annotated[int, BeforeValidator(_not_a_bool)]
# No inf or nan either: `lr: .inf` would pass here and fail only after the run folder was written.
Float = Annotated[float, BeforeValidator(_not_a_bool), Field(allow_inf_nan=False)]


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


# Transformer projection names of the LLaMA family; the default LoRA targets (all linear layers of a
# block, as QLoRA recommends; alpaca-lora's [q_proj, v_proj] is one flag away).
LLAMA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class _Section(BaseModel):
    """Base of every section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelSection(_Section):
    """Which model to fine-tune and how to load it."""

    name: str = Field(
        "tiny-llama",
        min_length=1,
        description="A built-in preset (tiny-llama), a local Hugging Face model folder, or a hub id.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for a hub id.")
    trust_remote_code: bool = Field(
        False, description="Allow a model folder's own Python code to run; off unless you trust it."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="Storage dtype of the base weights. Trainable weights (adapters) stay float32.",
    )
    attn_implementation: Literal["sdpa", "eager"] = Field("sdpa", description="Attention kernel.")
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none",
        description="Quantize the frozen base: 4bit (QLoRA: bitsandbytes; torchao NF4 under FSDP) or 8bit "
        "(bitsandbytes LLM.int8); needs a PEFT method. peft.method qlora sets 4bit.",
    )
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4bit: the 4-bit data type (QLoRA's nf4).")
    double_quant: bool = Field(
        True,
        description="4bit: quantize the per-block scales too (QLoRA's double quantization, ~0.4 bit/param).",
    )
    quant_backend: Literal["auto", "bitsandbytes", "torchao"] = Field(
        "auto",
        description="4bit: bitsandbytes (single, ddp) or torchao NF4 (single, fsdp); auto: torchao under "
        "fsdp, else bitsandbytes. torchao on one process reproduces an FSDP run's quantization.",
    )
    compute_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="4bit: dtype the dequantized weights multiply in; empty: model.dtype."
    )


class DataSection(_Section):
    """Where the training records come from and how they become token sequences."""

    format: str = Field(
        "quotes",
        description="quotes | text | alpaca | grammar | chat | classification, or your own as module:function.",
    )
    path: str | None = Field(
        None,
        description="A JSON/JSONL/CSV/Parquet file, a save_to_disk folder, a folder of data files, or a hub "
        "dataset id; empty: the format's bundled sample.",
    )
    split: str = Field("train", min_length=1, description="Split to read (e.g. train, train[:1000]).")
    subset: str | None = Field(None, description="Hub dataset configuration name, where it has several.")
    column_map: dict[str, str] = Field(
        default_factory=dict, description="Rename columns before use, e.g. {sentence: input, fixed: target}."
    )
    val_set_size: Int | Float = Field(
        0.1, description="Validation records held out: a count (int) or a fraction in (0, 1); 0 for none."
    )
    max_seq_len: Int = Field(
        256,
        ge=8,
        description="Tokens per example (alpaca-lora's cutoff_len); longer ones are truncated and counted.",
    )
    max_samples: Int | None = Field(None, ge=1, description="Use only the first N records.")
    batching: Literal["padding", "packing"] = Field(
        "padding",
        description="padding: pad each micro-batch to its longest; packing: rows of max_seq_len tokens holding "
        "several documents, none attending to another.",
    )
    group_by_length: bool = Field(
        False, description="With padding: batch examples of similar length (less padding; HF's grouping)."
    )
    train_on_inputs: bool = Field(
        False, description="Also train on prompt tokens (alpaca, grammar); false masks them with label -100."
    )
    prompt_template: str | None = Field(
        None,
        description="alpaca: a template name (alpaca, alpaca_legacy, alpaca_short) or an alpaca-lora .json file; "
        "grammar/classification: a format string with {input} / {text}. Empty: the format's default.",
    )
    text_field: str = Field("text", min_length=1, description="The column the text format trains on.")
    chat_template: str | None = Field(
        None, description="chat: a Jinja chat template (text or a .jinja file); empty: the tokenizer's own."
    )
    expand_corrections: bool = Field(
        True, description="grammar: a record with several corrections trains on each (false: the first only)."
    )

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        problem = format_problem(value)
        if problem:
            raise ValueError(problem.split(": ", 1)[1])
        return value

    @field_validator("val_set_size")
    @classmethod
    def _check_val_set_size(cls, value: float) -> float:
        if isinstance(value, float):
            if value == 0:
                return 0
            if not 0.0 < value < 1.0:
                raise ValueError("a fraction must lie in (0, 1); for a count of records use an integer")
        elif value < 0:
            raise ValueError("must be 0 (no validation split), a count, or a fraction in (0, 1)")
        return value

    @model_validator(mode="after")
    def _check_batching(self) -> DataSection:
        if self.group_by_length and self.batching == "packing":
            raise ValueError(
                "data.group_by_length applies to padding; packed rows all have max_seq_len tokens - "
                "drop group_by_length or use --data.batching padding"
            )
        return self


class LoraSection(_Section):
    """LoRA hyperparameters (HF PEFT's LoraConfig)."""

    r: Int = Field(16, ge=1, description="Rank of the low-rank update.")
    alpha: Float = Field(32, gt=0, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: Float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: list(LLAMA_LINEAR_MODULES),
        description="Module names to adapt (e.g. [q_proj, v_proj]) or 'all-linear'.",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train.")
    use_dora: bool = Field(
        False, description="DoRA: also learn each weight column's magnitude (better at low rank, slower)."
    )
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha / sqrt(r) instead of alpha / r.")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        # `--peft.lora.target_modules q_proj,v_proj` arrives as one string; a repeated flag as a list of
        # such strings (`... q_proj,v_proj --peft.lora.target_modules k_proj`).
        if isinstance(value, str) and value != "all-linear":
            return [part.strip() for part in value.strip("[]").split(",") if part.strip()]
        if isinstance(value, list) and len(value) > 1:
            return [part.strip() for item in value for part in (item.split(",") if isinstance(item, str) else [item])
                    if not isinstance(part, str) or part.strip()]  # fmt: skip
        return value

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError("name at least one module, e.g. [q_proj, v_proj], or use 'all-linear'")
        return value


class PrefixSection(_Section):
    """Prefix tuning (HF PEFT's PrefixTuningConfig): trained key/value prefixes in every layer."""

    num_virtual_tokens: Int = Field(20, ge=1, description="Prefix length (virtual tokens) per layer.")
    prefix_projection: bool = Field(
        False, description="Reparametrise the prefix through a two-layer MLP (the paper's stabiliser)."
    )
    encoder_hidden_size: Int | None = Field(
        None, ge=1, description="prefix_projection: the MLP's hidden width; empty: the model's hidden size."
    )


class PromptSection(_Section):
    """Prompt tuning (HF PEFT's PromptTuningConfig): trained input embeddings before every sequence."""

    num_virtual_tokens: Int = Field(20, ge=1, description="Soft prompt length (virtual tokens).")
    init_text: str | None = Field(
        None,
        description="Initialise the soft prompt from this text's token embeddings (repeated to the length); "
        "empty: random.",
    )


class LlamaAdapterSection(_Section):
    """LLaMA-Adapter (HF PEFT's AdaptionPromptConfig): gated prompts in the top attention layers."""

    adapter_len: Int = Field(10, ge=1, description="Adaption prompt tokens per adapted layer.")
    adapter_layers: Int = Field(
        30, ge=1, description="Adapt this many top layers (clamped to the model's layer count)."
    )


class Ia3Section(_Section):
    """IA3 (HF PEFT's IA3Config): learned rescaling of keys, values and the feed-forward input."""

    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["k_proj", "v_proj", "down_proj"],
        description="Modules whose activations are rescaled (PEFT's LLaMA default: k_proj, v_proj, down_proj).",
    )
    feedforward_modules: list[str] = Field(
        default_factory=lambda: ["down_proj"],
        description="Those of target_modules whose input (not output) is rescaled; a subset of target_modules.",
    )

    @field_validator("target_modules", "feedforward_modules", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        return LoraSection._split_commas(value)  # `--peft.ia3.target_modules k_proj,v_proj`


# Methods that add virtual tokens (or prompts) to attention rather than changing weights.
PROMPT_METHODS = ("prefix", "prompt", "llama_adapter")


class PeftSection(_Section):
    """Parameter-efficient method; 'none' trains the model's own weights."""

    method: Literal["lora", "qlora", "llama_adapter", "prefix", "prompt", "ia3", "none"] = Field(
        "lora",
        description="lora (with use_dora/use_rslora), qlora (lora on a 4-bit base), llama_adapter, prefix, "
        "prompt, ia3, or none (full fine-tuning).",
    )
    lora: LoraSection = Field(default_factory=LoraSection)
    prefix: PrefixSection = Field(default_factory=PrefixSection)
    prompt: PromptSection = Field(default_factory=PromptSection)
    llama_adapter: LlamaAdapterSection = Field(default_factory=LlamaAdapterSection)
    ia3: Ia3Section = Field(default_factory=Ia3Section)


class TrainSection(_Section):
    """The optimisation: batch sizes, schedule, precision, evaluation cadence."""

    epochs: Int = Field(3, ge=1, description="Passes over the training split (unless max_steps stops first).")
    max_steps: Int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps; overrides epochs when set."
    )
    micro_batch_size: Int = Field(4, ge=1, description="Sequences per forward/backward pass per process.")
    batch_size: Int = Field(
        8,
        ge=1,
        description="Global batch (sequences per optimizer step over all processes); "
        "gradient accumulation = batch_size / (micro_batch_size x world size).",
    )
    lr: Float = Field(
        3e-4, gt=0, description="Peak learning rate (3e-4 suits LoRA; full fine-tuning wants about 2e-5)."
    )
    weight_decay: Float = Field(0.0, ge=0, description="AdamW decoupled weight decay (matrices only).")
    adam_beta1: Float = Field(0.9, ge=0, lt=1)
    adam_beta2: Float = Field(0.999, ge=0, lt=1)
    adam_eps: Float = Field(1e-8, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_steps: Int | None = Field(
        None, ge=0, description="Linear warmup steps; overrides warmup_ratio; at most the run's length."
    )
    warmup_ratio: Float = Field(0.05, ge=0, le=1, description="Warmup as a share of all steps.")
    min_lr_ratio: Float = Field(0.0, ge=0, le=1, description="Cosine/linear decay floor, as a share of lr.")
    max_grad_norm: Float | None = Field(
        1.0, gt=0, description="Clip the global gradient norm; null: no clip."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Autocast compute dtype. auto: bf16 where the device computes it fast "
        "(CUDA with bf16, CPUs with AVX512-BF16 or AMX), else fp32.",
    )
    seed: Int = Field(
        42, ge=0, lt=2**32, description="Seeds data order, dropout and every random choice (0 to 2**32-1)."
    )
    eval_every: Int = Field(
        50, ge=0, description="Evaluate every N steps (and at the end); 0: only at the end."
    )
    log_every: Int = Field(1, ge=1, description="Write a metrics row every N steps.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward.")
    progress: bool = Field(True, description="Draw a live progress bar.")

    @model_validator(mode="after")
    def _check_batch(self) -> TrainSection:
        problem = batch_problem(self.batch_size, self.micro_batch_size)
        if problem:
            raise ValueError(problem)
        return self


class FsdpSection(_Section):
    """FSDP2 options (``distributed.strategy: fsdp``); see docs/distributed.md."""

    param_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None,
        description="Dtype parameters are all-gathered and computed in (gradients are reduced in "
        "float32); null: their storage dtype. float16 is refused (no loss scaling): use bfloat16.",
    )
    reshard_after_forward: bool = Field(
        True,
        description="Free gathered parameters after forward (full shard); false keeps them until "
        "backward (shard-grad-op: less communication, more memory).",
    )
    cpu_offload: bool = Field(
        False, description="Keep sharded parameters, gradients and optimizer state on CPU."
    )
    hsdp_replicate: Int = Field(
        1,
        ge=1,
        description="HSDP: replica groups (usually the number of nodes); each shards over "
        "world size / hsdp_replicate processes. 1: plain FSDP over all processes.",
    )


class DistributedSection(_Section):
    """Process layout: one process, or data parallel over torchrun's processes (DDP or FSDP2)."""

    strategy: Literal["single", "ddp", "fsdp"] = Field(
        "single",
        description="single: one process; ddp: replicate the model in every process (launch with "
        "torchrun); fsdp: shard it over the processes (FSDP2; launch with torchrun).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU.")
    fsdp: FsdpSection = Field(default_factory=FsdpSection)

    @model_validator(mode="after")
    def _fsdp_options_need_fsdp(self) -> DistributedSection:
        # Compared with the defaults, not with the fields set: a written run config lists them all.
        changed = [name for name, value in self.fsdp if value != FsdpSection.model_fields[name].default]
        if self.strategy != "fsdp" and changed:
            fields = ", ".join(f"distributed.fsdp.{name}" for name in changed)
            raise ValueError(
                f"{fields} {'apply' if len(changed) > 1 else 'applies'} only to strategy fsdp (strategy is "
                f"'{self.strategy}'); add --distributed.strategy fsdp or drop {'them' if len(changed) > 1 else 'it'}"
            )
        return self


class CheckpointSection(_Section):
    """Resumable training state written during the run (see docs/checkpoints.md)."""

    every_steps: Int = Field(
        100, ge=0, description="Save the whole training state every N optimizer steps; 0: not on an interval."
    )
    at_epoch_end: bool = Field(True, description="Also save at the end of each epoch.")
    keep: Int = Field(
        2,
        ge=1,
        description="Keep the last K checkpoints; an older one is deleted once a newer one is complete.",
    )


class GenerationSection(_Section):
    """The sample generated at the end of a run."""

    prompt: str | None = Field(None, description="Prompt; empty means the data format's own example.")
    max_new_tokens: Int = Field(48, ge=1)
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: Float = Field(0.8, gt=0)
    top_p: Float = Field(0.95, gt=0, le=1)


class EvalSection(_Section):
    """Generation-based evaluation during training (every train.eval_every steps and at the end)."""

    task_metrics: bool = Field(
        True,
        description="Generate greedy answers to validation prompts and score them (grammar: exact match, "
        "GLEU; alpaca, chat: ROUGE-L; classification as text: exact match); plain-text formats have none.",
    )
    max_generations: Int = Field(
        8, ge=0, description="Validation prompts answered per evaluation (the first N, in file order)."
    )
    log_samples: Int = Field(
        3,
        ge=0,
        description="Of those, how many (prompt, completion, reference) go to metrics and TensorBoard.",
    )
    max_new_tokens: Int = Field(48, ge=1, description="Tokens generated per answer at most.")


class LoggingSection(_Section):
    """Where metrics go besides metrics.jsonl."""

    tensorboard: bool = True
    plot: bool = True
    wandb: bool = Field(
        False,
        description="Also log to Weights & Biases (pip install wandb; WANDB_MODE=offline needs no network).",
    )
    wandb_project: str = Field("llmft", min_length=1, description="W&B project of the run.")
    peak_tflops: Float | None = Field(
        None, gt=0, description="Peak dense TFLOP/s per device for MFU; empty: the GPU's datasheet figure."
    )
    measure_cpu_peak: bool = Field(
        False, description="On CPU, measure a matmul peak once at the start, for MFU (about a second)."
    )


class FreezeSection(_Section):
    """Which weights train when peft.method is none (full or partial fine-tuning)."""

    strategy: Literal["none", "bottom", "patterns", "head_only"] = Field(
        "none",
        description="none: every weight trains; bottom: freeze the embeddings and the bottom decoder blocks; "
        "patterns: regular expressions over parameter names; head_only: only the output head (LM head or "
        "classifier).",
    )
    num_frozen_layers: Int | None = Field(
        None,
        ge=0,
        description="bottom: freeze this many decoder blocks from the bottom (and the embeddings).",
    )
    num_trainable_layers: Int | None = Field(
        None, ge=0, description="bottom: or train only this many blocks from the top (the rest frozen)."
    )
    include: list[str] = Field(
        default_factory=list, description="patterns: parameters whose name matches one of these train."
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="patterns: parameters matching one of these stay frozen (wins over include).",
    )
    train_embeddings: bool = Field(
        False, description="Keep the token embeddings trainable (bottom, head_only)."
    )
    train_norms: bool = Field(False, description="Keep every RMSNorm trainable (bottom, head_only).")

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _one_pattern(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("include", "exclude")
    @classmethod
    def _valid_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression ({exc})") from None
        return value

    @model_validator(mode="after")
    def _check_strategy(self) -> FreezeSection:
        layers = (self.num_frozen_layers, self.num_trainable_layers)
        if self.strategy == "bottom" and sum(n is not None for n in layers) != 1:
            raise ValueError(
                "freeze.strategy bottom needs exactly one of freeze.num_frozen_layers (e.g. 28) or "
                "freeze.num_trainable_layers (e.g. 4)"
            )
        if self.strategy != "bottom" and any(n is not None for n in layers):
            raise ValueError(
                f"freeze.num_frozen_layers / num_trainable_layers apply to strategy bottom (strategy is "
                f"'{self.strategy}'); add --freeze.strategy bottom"
            )
        if self.strategy == "patterns" and not (self.include or self.exclude):
            raise ValueError(
                "freeze.strategy patterns needs freeze.include or freeze.exclude regular expressions"
            )
        if self.strategy != "patterns" and (self.include or self.exclude):
            raise ValueError(
                "freeze.include / exclude apply to strategy patterns; add --freeze.strategy patterns"
            )
        if self.strategy not in ("bottom", "head_only") and (self.train_norms or self.train_embeddings):
            raise ValueError(
                f"freeze.train_norms / train_embeddings apply to strategies bottom and head_only (strategy is "
                f"'{self.strategy}'); add --freeze.strategy bottom or head_only"
                + (
                    " (patterns: add the norms or embeddings to freeze.include)"
                    if self.strategy == "patterns"
                    else ""
                )
            )
        return self


class HeadSection(_Section):
    """The classifier head of ``task: classification``, on the pooled last non-padding token."""

    type: Literal["linear", "mlp"] = Field(
        "linear",
        description="linear: HF's own sequence-classification head (plain transformers loads it); "
        "mlp: new fully connected layers.",
    )
    num_layers: Int = Field(
        2, ge=2, description="mlp: linear layers, the last one projecting to the classes."
    )
    width: Int | None = Field(None, ge=1, description="mlp: hidden width; empty: the model's hidden size.")
    activation: Literal["gelu", "relu", "silu", "tanh"] = Field("gelu", description="mlp: between layers.")
    dropout: Float = Field(0.1, ge=0.0, lt=1.0, description="mlp: dropout before each linear layer.")

    @model_validator(mode="after")
    def _mlp_settings_need_mlp(self) -> HeadSection:
        # Compared with the defaults, not model_fields_set: classifier.json records every field.
        changed = [
            name
            for name in ("num_layers", "width", "activation", "dropout")
            if getattr(self, name) != type(self).model_fields[name].default
        ]
        if self.type != "mlp" and changed:
            raise ValueError(
                f"head.{' / '.join(changed)} {'apply' if len(changed) > 1 else 'applies'} to head.type mlp (type "
                f"is '{self.type}'); add --head.type mlp or leave {'them' if len(changed) > 1 else 'it'} out"
            )
        return self


class Config(_Section):
    """The whole run."""

    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    peft: PeftSection = Field(default_factory=PeftSection)
    train: TrainSection = Field(default_factory=TrainSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    generation: GenerationSection = Field(default_factory=GenerationSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    task: Literal["causal_lm", "classification"] = Field(
        "causal_lm",
        description="causal_lm: next-token prediction; classification: a classifier head on the pooled last "
        "token of data.format classification records.",
    )
    freeze: FreezeSection = Field(default_factory=FreezeSection)
    head: HeadSection = Field(default_factory=HeadSection)
    output_dir: str | None = Field(
        None, description="Run folder; empty means runs/<model>-<format>-<method>."
    )

    @model_validator(mode="after")
    def _check_full_finetune_dtype(self) -> Config:
        if self.peft.method == "none" and self.model.dtype != "float32":
            raise ValueError(
                f"model.dtype {self.model.dtype} with peft.method none would train {self.model.dtype} weights "
                f"directly, and most small updates round away; keep model.dtype float32 and use "
                f"train.precision bf16 (autocast computes in bf16 and keeps fp32 master weights)"
            )
        return self

    @model_validator(mode="after")
    def _check_task(self) -> Config:
        if self.freeze.strategy != "none" and self.peft.method != "none":
            raise ValueError(
                f"freeze.strategy {self.freeze.strategy} chooses which of the model's own weights train, so it "
                f"needs peft.method none (now '{self.peft.method}', whose adapters decide what trains)"
            )
        if self.task == "causal_lm" and self.head != HeadSection():
            raise ValueError(
                "head.* configures the classifier of task classification; a causal LM has no such head - "
                "add --task classification or drop the head settings"
            )
        if self.task == "classification":
            if self.data.format != "classification":
                raise ValueError(
                    f"task classification reads text and label records: use data.format classification "
                    f"(now '{self.data.format}'; rename columns with data.column_map)"
                )
            if self.data.batching == "packing":
                raise ValueError("task classification pools one text per row: use data.batching padding")
        return self

    @model_validator(mode="after")
    def _check_peft(self) -> Config:
        """Method x quantization x strategy x data combinations that cannot work, named before any work."""
        method, model, strategy = self.peft.method, self.model, self.distributed.strategy
        if method == "qlora":
            if "quantization" not in model.model_fields_set:
                # qlora is lora on a quantized base; 4bit unless the config says otherwise. Set without
                # re-validating the section (validate_assignment would run this check again).
                object.__setattr__(model, "quantization", "4bit")
            elif model.quantization == "none":
                raise ValueError(
                    "peft.method qlora is LoRA on a quantized base, but model.quantization is none; "
                    "use --peft.method lora, or --model.quantization 4bit"
                )
        if model.quantization != "none" and method == "none":
            raise ValueError(
                f"model.quantization {model.quantization} freezes the base in {model.quantization}, so "
                f"peft.method none has nothing to train; pick a PEFT method (e.g. --peft.method lora)"
            )
        if model.quantization != "4bit":
            changed = [
                f"model.{name}"
                for name in ("quant_type", "double_quant", "compute_dtype", "quant_backend")
                if getattr(model, name) != ModelSection.model_fields[name].default
            ]
            if changed:
                raise ValueError(
                    f"{', '.join(changed)} apply to model.quantization 4bit (now {model.quantization}); "
                    f"add --model.quantization 4bit or drop them"
                )
        if strategy == "fsdp" and model.quantization == "8bit":
            raise ValueError(
                "model.quantization 8bit cannot be sharded by FSDP (bitsandbytes' int8 weights carry "
                "row-wise state FSDP2 cannot split); use --model.quantization 4bit (sharded as torchao NF4) "
                "or --distributed.strategy ddp"
            )
        wrong_strategy = "fsdp" if model.quant_backend == "bitsandbytes" else "ddp"
        if model.quantization == "4bit" and model.quant_backend != "auto" and strategy == wrong_strategy:
            raise ValueError(
                f"model.quant_backend {model.quant_backend} under strategy {strategy}: FSDP shards "
                f"torchao's NF4 and DDP replicates bitsandbytes' 4-bit weights; use --model.quant_backend auto"
            )
        if model.quantization == "4bit" and model.quant_backend == "auto":
            # Resolved here, so the written run config says which 4-bit format the adapter was trained
            # on: export and reload then rebuild the same base (torchao's NF4 codes differ from
            # bitsandbytes'). Set without re-validating, as above.
            object.__setattr__(model, "quant_backend", "torchao" if strategy == "fsdp" else "bitsandbytes")
        if model.quantization == "4bit" and model.quant_backend == "torchao":
            if model.quant_type != "nf4":
                raise ValueError(
                    f"model.quant_type {model.quant_type} with torchao (FSDP's 4-bit base): it has only "
                    f"NF4; use --model.quant_type nf4, or bitsandbytes (--distributed.strategy ddp)"
                )
            if not model.double_quant:
                raise ValueError(
                    "model.double_quant false with torchao (FSDP's 4-bit base): its NF4 always quantizes "
                    "the block scales; drop model.double_quant, or use bitsandbytes (--distributed.strategy ddp)"
                )
            if method in ("lora", "qlora") and self.peft.lora.use_dora:
                raise ValueError(
                    "peft.lora.use_dora on torchao's 4-bit base (FSDP's): PEFT cannot dequantize its NF4 "
                    "weight for DoRA's norm; drop use_dora, or use bitsandbytes (--distributed.strategy ddp)"
                )
        if method in PROMPT_METHODS:
            if self.data.batching == "packing":
                raise ValueError(
                    f"peft.method {method} puts its virtual tokens before every row, so packed documents "
                    f"would all attend to one prompt and share position ids; use --data.batching padding"
                )
            if self.task == "classification":
                raise ValueError(
                    f"peft.method {method} with task classification: the classifier pools the last real "
                    f"token, which virtual tokens shift; use lora or ia3 for classification"
                )
        if method == "ia3":
            targets, feedforward = self.peft.ia3.target_modules, self.peft.ia3.feedforward_modules
            extra = [name for name in feedforward if isinstance(targets, list) and name not in targets]
            if extra:
                raise ValueError(
                    f"peft.ia3.feedforward_modules {extra} are not in peft.ia3.target_modules {targets}; "
                    f"add them there or drop them"
                )
        return self

    def resolved_output_dir(self) -> Path:
        """The run folder: the configured one, or a name derived from model, data and method."""
        if self.output_dir:
            return Path(self.output_dir).expanduser()
        model = Path(self.model.name.rstrip("/")).name or "model"
        fmt = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.data.format)
        return Path("runs") / f"{model}-{fmt}-{self.peft.method}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
