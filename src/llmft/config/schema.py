"""The schema of a run: the root :class:`Config`, one field per section.

The sections live by concern in :mod:`.inputs` (model, data), :mod:`.tuning` (peft, freeze, head) and
:mod:`.run` (train, distributed, checkpoint, generation, eval, logging); checks that span sections are
the root's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from llmft.config.base import Section
from llmft.config.inputs import DataSection, ModelSection
from llmft.config.run import (
    CheckpointSection,
    DistributedSection,
    EvalSection,
    GenerationSection,
    LoggingSection,
    TrainSection,
)
from llmft.config.tuning import PROMPT_METHODS, FreezeSection, HeadSection, PeftSection


class Config(Section):
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
