"""How the model is tuned: the PEFT method and its settings (``peft``), which of the model's own weights
train when there is none (``freeze``), and the classifier head of ``task: classification`` (``head``)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from llmft.config.base import Float, Int, Section, split_commas

# Transformer projection names of the LLaMA family; the default LoRA targets (all linear layers of a
# block, as QLoRA recommends; alpaca-lora's [q_proj, v_proj] is one flag away).
LLAMA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraSection(Section):
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
        return split_commas(value)  # `--peft.lora.target_modules q_proj,v_proj`

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError("name at least one module, e.g. [q_proj, v_proj], or use 'all-linear'")
        return value


class PrefixSection(Section):
    """Prefix tuning (HF PEFT's PrefixTuningConfig): trained key/value prefixes in every layer."""

    num_virtual_tokens: Int = Field(20, ge=1, description="Prefix length (virtual tokens) per layer.")
    prefix_projection: bool = Field(
        False, description="Reparametrise the prefix through a two-layer MLP (the paper's stabiliser)."
    )
    encoder_hidden_size: Int | None = Field(
        None, ge=1, description="prefix_projection: the MLP's hidden width; empty: the model's hidden size."
    )


class PromptSection(Section):
    """Prompt tuning (HF PEFT's PromptTuningConfig): trained input embeddings before every sequence."""

    num_virtual_tokens: Int = Field(20, ge=1, description="Soft prompt length (virtual tokens).")
    init_text: str | None = Field(
        None,
        description="Initialise the soft prompt from this text's token embeddings (repeated to the length); "
        "empty: random.",
    )


class LlamaAdapterSection(Section):
    """LLaMA-Adapter (HF PEFT's AdaptionPromptConfig): gated prompts in the top attention layers."""

    adapter_len: Int = Field(10, ge=1, description="Adaption prompt tokens per adapted layer.")
    adapter_layers: Int = Field(
        30, ge=1, description="Adapt this many top layers (clamped to the model's layer count)."
    )


class Ia3Section(Section):
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
        return split_commas(value)  # `--peft.ia3.target_modules k_proj,v_proj`


# Methods that add virtual tokens (or prompts) to attention rather than changing weights.
PROMPT_METHODS = ("prefix", "prompt", "llama_adapter")


class PeftSection(Section):
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


class FreezeSection(Section):
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


class HeadSection(Section):
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
