"""The inputs of a run: the model to fine-tune (``model``) and the records it learns from (``data``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from llmft.config.base import Float, Int, Section
from llmft.format_names import format_problem


class ModelSection(Section):
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


class DataSection(Section):
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
