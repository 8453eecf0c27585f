"""Every parameter tensor a run holds, from the model shape and the method alone (no weights).

The inventory lists each tensor with its shape, whether it trains and its bytes per element, so the
planner can count parameters, gradients and optimizer states exactly, and shard each tensor the way
FSDP2 does (along dim 0). The adapter shapes are those HF PEFT creates (checked against real PEFT
models in the tests); the defaults of each method are documented in docs/memory.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmft.errors import UserError
from llmft.memory.architectures import ModelShape

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# bitsandbytes NF4 with double quantization (QLoRA's setting): 4-bit codes, an 8-bit scale per block of
# 64 weights, and an fp32 scale per 256 of those blocks.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
METHODS = ("full", "lora", "qlora", "dora", "ia3", "prefix", "prompt", "llama_adapter")
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Every linear layer LoRA may target: the block projections and the LM head (hidden -> vocab).
LORA_TARGETS = (*LLAMA_LINEARS, "lm_head")


@dataclass(frozen=True)
class MethodSpec:
    """A method and its hyperparameters, with llmft's (and PEFT's) defaults.

    Attributes:
        name: one of METHODS; 'full' trains the model's own weights.
        lora_r / lora_dropout / lora_targets: LoRA, QLoRA and DoRA (default r 16 on all 7 projections).
        num_virtual_tokens: prefix and prompt tuning (default 20).
        adapter_len / adapter_layers: LLaMA-Adapter (adaption prompt): 10 prompt tokens in the top
            min(30, layers) layers, as in the paper (30 of LLaMA-7B's 32).
        num_frozen_layers: full fine-tuning with the embeddings and the bottom N blocks frozen.
        head_only: full fine-tuning of the output head alone.
    """

    name: str = "lora"
    lora_r: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = LLAMA_LINEARS
    num_virtual_tokens: int = 20
    adapter_len: int = 10
    adapter_layers: int | None = None
    num_frozen_layers: int = 0
    head_only: bool = False

    @property
    def is_lora(self) -> bool:
        return self.name in ("lora", "qlora", "dora")

    @property
    def trains_base(self) -> bool:
        return self.name == "full"


@dataclass(frozen=True)
class ParamTensor:
    """One parameter tensor: ``block`` is its decoder block (None outside the blocks)."""

    name: str
    shape: tuple[int, ...]
    trainable: bool
    bytes_per_element: float
    block: int | None = None
    adapter: bool = False
    quantized: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def shard_numel(self, shards: int) -> int:
        """Elements of rank 0's FSDP2 shard: dim 0 split as torch.chunk does (the first ranks get
        ceil(dim0 / shards) rows; padding to that size is FSDP's, the local tensor has no padding)."""
        return -(-self.shape[0] // shards) * math.prod(self.shape[1:])


@dataclass
class Inventory:
    tensors: list[ParamTensor] = field(default_factory=list)

    def add(self, *args, **kwargs) -> None:
        self.tensors.append(ParamTensor(*args, **kwargs))

    @property
    def trainable(self) -> list[ParamTensor]:
        return [t for t in self.tensors if t.trainable]

    def count(self, trainable_only: bool = False) -> int:
        return sum(t.numel for t in self.tensors if t.trainable or not trainable_only)


def check_method(shape: ModelShape, spec: MethodSpec) -> None:
    """A UserError naming the flag for a method setting that cannot apply to ``shape``."""
    if spec.name not in METHODS:
        raise UserError(f"--method '{spec.name}' is not a method; use one of {', '.join(METHODS)}")
    if not 0 <= spec.num_frozen_layers <= shape.num_layers:
        raise UserError(
            f"--num-frozen-layers {spec.num_frozen_layers}: the model has {shape.num_layers} blocks; "
            f"give 0 to {shape.num_layers}"
        )
    if (spec.num_frozen_layers or spec.head_only) and spec.name != "full":
        raise UserError(
            f"--num-frozen-layers / --head-only apply to --method full (not '{spec.name}'): a PEFT "
            f"method already freezes the base"
        )
    unknown = [t for t in spec.lora_targets if t not in LORA_TARGETS]
    if spec.is_lora and unknown:
        raise UserError(f"LoRA targets {unknown} are not LLaMA linear layers; use some of {LORA_TARGETS}")
    if spec.lora_r < 1:
        raise UserError(f"--lora-r {spec.lora_r}: the rank must be at least 1")


def inventory(shape: ModelShape, spec: MethodSpec, base_dtype: str) -> Inventory:
    """The parameter tensors of ``shape`` under ``spec``.

    Trainable tensors are fp32 (llmft keeps what trains in fp32); frozen base weights are stored in
    ``base_dtype``, except QLoRA's block projections, which are 4-bit NF4.
    """
    check_method(shape, spec)
    inv = Inventory()
    full = spec.trains_base
    first_trained = spec.num_frozen_layers if not spec.head_only else shape.num_layers

    def base(name, dims, trains, block=None, quantized=False):
        nbytes = NF4_BYTES if quantized else 4 if trains else DTYPE_BYTES[base_dtype]
        inv.add(name, dims, trains, nbytes, block, quantized=quantized)

    h, v = shape.hidden_size, shape.vocab_size
    trains_embed = full and not spec.head_only and spec.num_frozen_layers == 0
    # Tied embeddings: one tensor serves input and output, and trains if either does.
    base("embed_tokens", (v, h), trains_embed or (shape.tie_word_embeddings and full))
    for layer in range(shape.num_layers):
        trains = full and layer >= first_trained
        for proj, (out, inp) in shape.linear_shapes().items():
            base(f"layers.{layer}.{proj}", (out, inp), trains, layer, quantized=spec.name == "qlora")
            # LlamaAttention gives q/k/v/o a bias when attention_bias is set; the MLP when mlp_bias is.
            if shape.attention_bias if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else shape.mlp_bias:
                base(f"layers.{layer}.{proj}.bias", (out,), trains, layer)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            base(f"layers.{layer}.{norm}", (h,), trains, layer)
    base("norm", (h,), full and not spec.head_only)
    if not shape.tie_word_embeddings:
        base("lm_head", (v, h), full)
    _add_adapters(inv, shape, spec)
    return inv


def _add_adapters(inv: Inventory, shape: ModelShape, spec: MethodSpec) -> None:
    """The trainable tensors a PEFT method adds (fp32), with the shapes HF PEFT gives them."""
    layers, linears = shape.num_layers, shape.linear_shapes()
    if spec.is_lora:
        if "lm_head" in spec.lora_targets:  # outside the blocks; tied or not, PEFT adapts the module
            h, v = shape.hidden_size, shape.vocab_size
            inv.add("lm_head.lora_A", (spec.lora_r, h), True, 4, adapter=True)
            inv.add("lm_head.lora_B", (v, spec.lora_r), True, 4, adapter=True)
            if spec.name == "dora":
                inv.add("lm_head.magnitude", (v,), True, 4, adapter=True)
        for layer in range(layers):
            for proj in (t for t in spec.lora_targets if t != "lm_head"):
                out, inp = linears[proj]
                inv.add(f"layers.{layer}.{proj}.lora_A", (spec.lora_r, inp), True, 4, layer, adapter=True)
                inv.add(f"layers.{layer}.{proj}.lora_B", (out, spec.lora_r), True, 4, layer, adapter=True)
                if spec.name == "dora":  # the magnitude of each output row
                    inv.add(f"layers.{layer}.{proj}.magnitude", (out,), True, 4, layer, adapter=True)
    elif spec.name == "ia3":
        # PEFT's LLaMA defaults: scale the outputs of k_proj and v_proj and the input of down_proj.
        for layer in range(layers):
            inv.add(f"layers.{layer}.k_proj.ia3", (shape.kv_dim, 1), True, 4, layer, adapter=True)
            inv.add(f"layers.{layer}.v_proj.ia3", (shape.kv_dim, 1), True, 4, layer, adapter=True)
            inv.add(f"layers.{layer}.down_proj.ia3", (1, shape.intermediate_size), True, 4, layer,
                    adapter=True)  # fmt: skip
    elif spec.name == "prompt":
        inv.add("prompt_embeddings", (spec.num_virtual_tokens, shape.hidden_size), True, 4, adapter=True)
    elif spec.name == "prefix":
        # A key and a value per layer for every virtual token (PEFT sizes them by the KV heads).
        width = layers * 2 * shape.kv_dim
        inv.add("prefix_embeddings", (spec.num_virtual_tokens, width), True, 4, adapter=True)
    elif spec.name == "llama_adapter":
        for layer in adapter_layer_range(shape, spec):
            inv.add(f"layers.{layer}.adaption_prompt", (1, spec.adapter_len, shape.hidden_size), True, 4,
                    layer, adapter=True)  # fmt: skip
            inv.add(f"layers.{layer}.adaption_gate", (1,), True, 4, layer, adapter=True)


def adapter_layer_range(shape: ModelShape, spec: MethodSpec) -> range:
    """The decoder blocks LLaMA-Adapter adapts: the top ``adapter_layers`` (default min(30, layers))."""
    count = min(spec.adapter_layers or 30, shape.num_layers)
    return range(shape.num_layers - count, shape.num_layers)
