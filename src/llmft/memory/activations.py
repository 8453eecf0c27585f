"""Bytes that autograd saves for backward in one forward pass of a LLaMA decoder (transformers' code).

Written by hand because no library models it: accelerate's ``estimate-memory`` counts weights only,
and a measured dry run needs the hardware. The walk below follows transformers' LLaMA forward op by op
and counts each tensor that autograd keeps, once (tensors that share storage are one tensor): which
ones are kept depends on what requires grad, so the walk tracks that from the embeddings up (a frozen
bottom block, or LoRA's frozen base, saves much less than a trained one). The tests compare the result
with the bytes measured by ``torch.autograd.graph.saved_tensors_hooks`` (deduplicated by storage,
parameters excluded); see docs/memory.md for the formulas.

Dtypes: ``store`` is the dtype of the residual stream and of unquantized base weights as the forward
sees them (storage dtype, or FSDP's ``param_dtype``); ``compute`` is the autocast dtype (or ``store``
without autocast). RMSNorm always computes in fp32, and the loss's log-softmax is fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmft.memory.architectures import ModelShape
from llmft.memory.params import Inventory, MethodSpec, adapter_layer_range

QKV = ("q_proj", "k_proj", "v_proj")


@dataclass(frozen=True)
class ActivationSetup:
    """What decides the saved bytes besides the shape and the method."""

    store_bytes: int  # residual stream / unquantized base weights as computed with
    compute_bytes: int  # autocast dtype, or store_bytes without autocast
    autocast: bool
    mask_bytes: int = 1  # LoRA dropout mask per element: bool on CUDA; the input's dtype on CPU
    attention: str = "sdpa"  # sdpa (flash / memory-efficient: no T x T matrix) or eager
    packed: bool = False  # packed rows: per-row position ids and a block-diagonal 4-D mask


@dataclass
class ActivationBytes:
    """Saved bytes, split so that activation checkpointing can be applied to them."""

    per_block: list[float]  # per token, each decoder block
    outside_per_token: float  # embeddings, final norm, head, loss
    per_micro_batch: float  # rotary cos/sin (shared by all blocks)
    block_weight_copies: list[float]  # autocast's low-precision copies of each block's weights
    head_weight_copies: float
    block_input_per_token: float  # what checkpointing keeps of each block: its input
    tokens_per_row: int  # sequence length, plus prompt tuning's virtual tokens

    def total(self, micro_batch: int, checkpointing: bool) -> float:
        """Saved bytes of one micro-batch of ``micro_batch`` rows, at the peak (start of backward).

        With checkpointing each block keeps only its input, and the block being recomputed in
        backward holds its own saved tensors (the largest block is the peak)."""
        tokens = micro_batch * self.tokens_per_row
        outside = tokens * self.outside_per_token + self.per_micro_batch + self.head_weight_copies
        if checkpointing:
            largest = max(self._blocks(tokens))
            return outside + tokens * self.block_input_per_token * len(self.per_block) + largest
        return outside + tokens * sum(self.per_block) + sum(self.block_weight_copies)

    def _blocks(self, tokens: int) -> list[float]:
        return [tokens * b + w for b, w in zip(self.per_block, self.block_weight_copies, strict=True)]

    def weight_copies(self, micro_batch: int, checkpointing: bool) -> float:
        """The part of :meth:`total` that is autocast's weight copies (batch-independent)."""
        if not checkpointing:
            return self.head_weight_copies + sum(self.block_weight_copies)
        blocks = self._blocks(micro_batch * self.tokens_per_row)
        return self.head_weight_copies + self.block_weight_copies[blocks.index(max(blocks))]


class _Walk:
    """Follows the forward through one block at a time, tracking whether activations require grad."""

    def __init__(self, shape: ModelShape, spec: MethodSpec, inv: Inventory, setup: ActivationSetup):
        self.shape, self.spec, self.setup = shape, spec, setup
        self.trains = {t.name for t in inv.tensors if t.trainable and not t.adapter}
        self.linears = shape.linear_shapes()
        self.adapted = set(adapter_layer_range(shape, spec)) if spec.name == "llama_adapter" else set()
        self.c, self.st = setup.compute_bytes, setup.store_bytes

    def _norm(self, grad_in: bool, weight_trains: bool) -> float:
        h = self.shape.hidden_size
        # RMSNorm: pow and the rsqrt product keep the fp32 input (a copy when stored lower) and the
        # rsqrt; the weight product keeps the normalised input (in store dtype) if the weight trains.
        return (4 * h + 4 if grad_in else 0) + (self.st * h if weight_trains else 0)

    def _consumers(self, layer: int, projs, width: int, x_bytes: int, grad_in: bool, saved: bool):
        """Saved bytes for the linears (and adapters) that read one input of ``width``; returns
        (bytes per token, weight-copy bytes, whether any output requires grad)."""
        spec, c = self.spec, self.c
        cast = self.setup.autocast and x_bytes != c  # the matmul keeps its own low-precision copy
        total = copies = 0.0
        shared = out_grad = False
        for proj in projs:
            out, inp = self.linears[proj]
            trains = f"layers.{layer}.{proj}" in self.trains
            lora = spec.is_lora and proj in spec.lora_targets
            ia3_in = spec.name == "ia3" and proj == "down_proj"  # scales the input: keeps it
            adapter_shares = lora and spec.lora_dropout == 0 and (self.setup.autocast or x_bytes == 4)
            if trains or adapter_shares or ia3_in:
                if cast:
                    total += c * width
                else:
                    shared = True
            if self.setup.autocast and spec.name != "qlora" and self.st != c and grad_in:
                copies += c * out * inp  # the cast weight, kept for the input's gradient
            if lora:
                # The adapter computes in the autocast dtype, else in its own fp32 (PEFT casts the
                # input to the adapter's dtype: a copy when the base is stored lower).
                a = c if self.setup.autocast else 4
                if spec.lora_dropout > 0:
                    # Dropout keeps its mask (if its input needs a gradient); lora_A keeps the result.
                    total += (self.setup.mask_bytes * width if grad_in else 0) + a * width
                elif a != x_bytes:
                    total += a * width
                total += a * spec.lora_r  # lora_A's output, kept by lora_B
                if self.setup.autocast:
                    copies += c * out * spec.lora_r + (c * spec.lora_r * inp if grad_in else 0)
                if spec.name == "dora":
                    total += 2 * c * out  # base and LoRA outputs, kept by the magnitude scaling
            out_grad = out_grad or grad_in or trains or lora or ia3_in
        if shared and not saved:
            total += x_bytes * width
        return total, copies, out_grad

    def block(self, layer: int, grad_in: bool) -> tuple[float, float, bool]:
        """(saved bytes per token, autocast weight copies, whether the output requires grad)."""
        s, spec, c = self.shape, self.spec, self.c
        h, i, qd, kvd = s.hidden_size, s.intermediate_size, s.q_dim, s.kv_dim
        norm_trains = f"layers.{layer}.input_layernorm" in self.trains
        total = self._norm(grad_in, norm_trains)
        y_grad = grad_in or norm_trains
        qkv, copies, attn_grad = self._consumers(layer, QKV, h, self.st, y_grad, False)
        total += qkv
        attn_grad = attn_grad or spec.name == "prefix" or layer in self.adapted
        if spec.name == "ia3":
            total += 2 * kvd * c  # k and v outputs, kept by their scaling vectors
        if attn_grad:
            total += self._attention(layer)
        o_bytes, o_copies, o_grad = self._consumers(
            layer, ("o_proj",), qd, c, attn_grad, self.setup.attention == "sdpa" and attn_grad
        )
        total, copies = total + o_bytes, copies + o_copies
        mid_grad = attn_grad or o_grad
        norm2_trains = f"layers.{layer}.post_attention_layernorm" in self.trains
        total += self._norm(mid_grad, norm2_trains)
        y2_grad = mid_grad or norm2_trains
        gate_up, gu_copies, mlp_grad = self._consumers(layer, ("gate_proj", "up_proj"), h, self.st, y2_grad,
                                                       False)  # fmt: skip
        total, copies = total + gate_up, copies + gu_copies
        if mlp_grad:
            total += 3 * c * i  # gate output (kept by SiLU), SiLU and up outputs (kept by their product)
        down, down_copies, down_grad = self._consumers(layer, ("down_proj",), i, c, mlp_grad, False)
        return total + down, copies + down_copies, mid_grad or mlp_grad or down_grad

    def _attention(self, layer: int) -> float:
        s, spec, c = self.shape, self.spec, self.c
        qd, kvd, nh = s.q_dim, s.kv_dim, s.num_heads
        rows = self.tokens_per_row
        if self.setup.attention == "eager":
            # q and the K/V heads repeated to all query heads; fp32 softmax (and its cast); the
            # attention output is copied contiguous for o_proj (counted there).
            probs = nh * rows * (4 + (c if c != 4 else 0))
            total = 3 * c * qd + probs
        else:
            # SDPA keeps q, k, v, its output and the fp32 log-sum-exp per head (no T x T matrix).
            total = (2 * qd + 2 * kvd) * c + 4 * nh
            if self.setup.packed:
                # Packed rows reach SDPA with a block-diagonal mask; transformers then repeats K and V
                # to every query head (no GQA in SDPA with a mask), and SDPA keeps the mask as a float
                # bias in the compute dtype, one (T, T) matrix per row in every layer.
                total += 2 * (qd - kvd) * c + rows * c
        if spec.name == "prefix":  # the virtual tokens' keys and values, for every row
            total += 2 * kvd * c * spec.num_virtual_tokens / rows
        if layer in self.adapted:
            # LLaMA-Adapter recomputes the queries and attends to its prompt: queries, fp32 softmax
            # over adapter_len keys, and the gated output.
            total += 2 * c * qd + (4 + c) * nh * spec.adapter_len
        return total

    @property
    def tokens_per_row(self) -> int:
        return self._rows

    def run(self, seq_len: int) -> ActivationBytes:
        s, spec = self.shape, self.spec
        self._rows = seq_len + (spec.num_virtual_tokens if spec.name == "prompt" else 0)
        embed_trains = "embed_tokens" in self.trains
        grad = embed_trains or spec.name == "prompt"
        outside = 8.0 if embed_trains else 0.0  # the token ids, kept by the embedding lookup
        blocks, copies = [], []
        for layer in range(s.num_layers):
            saved, copied, grad = self.block(layer, grad)
            blocks.append(saved)
            copies.append(copied)
        norm_trains = "norm" in self.trains
        head = "embed_tokens" if s.tie_word_embeddings else "lm_head"
        head_trains = head in self.trains
        outside += self._norm(grad, norm_trains)
        head_copies = 0.0
        if head_trains:  # the head keeps its input (a cast copy under autocast)
            outside += (
                self.c * s.hidden_size
                if self.setup.autocast and self.st != self.c
                else self.st * s.hidden_size
            )
        if self.setup.autocast and self.st != self.c and (grad or norm_trains):
            head_copies = self.c * s.vocab_size * s.hidden_size
        # The loss: fp32 log-softmax over the vocabulary (kept by the NLL) and the shifted int64 labels.
        outside += 4 * s.vocab_size + 8
        # Rotary cos and sin, one (T, head_dim) pair in the residual dtype, shared by every block; one
        # pair per row for packed rows (their position ids restart at every document).
        per_micro_batch = 2 * self._rows * s.head_size * self.st
        if self.setup.packed:
            outside += 2 * s.head_size * self.st
            per_micro_batch = 0
        return ActivationBytes(blocks, outside, per_micro_batch, copies, head_copies,
                               self.st * s.hidden_size, self._rows)  # fmt: skip


def activation_bytes(
    shape: ModelShape, spec: MethodSpec, inv: Inventory, setup: ActivationSetup, seq_len: int
) -> ActivationBytes:
    """The saved-for-backward bytes of ``shape`` under ``spec`` for rows of ``seq_len`` tokens."""
    return _Walk(shape, spec, inv, setup).run(seq_len)
