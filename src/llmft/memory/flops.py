"""Model FLOPs of a training step, counted from the model's shape and what trains.

Per token, each weight matrix of ``n`` elements costs ``2n`` forward, ``2n`` for the gradient of its
input (when a gradient has to flow through it) and ``2n`` for its own gradient (when it trains), so full
fine-tuning is the familiar ``6N`` and a frozen base ``4N`` plus its adapters; attention adds
``4 * T * q_dim`` per layer and token forward (scores and weighted values, without causal savings, as
PaLM counts them) and twice that backward. ``T`` is the step's mean real row length. See
docs/memory.md for the formula; the step observer (:mod:`llmft.train.observe`) turns it into MFU.
"""

from __future__ import annotations

from llmft.memory.architectures import ModelShape
from llmft.memory.params import Inventory
from llmft.train.observe import FlopsModel


def flops_model(shape: ModelShape, inv: Inventory) -> FlopsModel:
    """FLOPs per token of one training step of ``shape`` with ``inv``'s trainable tensors."""
    trainable_blocks = {t.block for t in inv.trainable if t.block is not None}
    # Gradients flow through every block above the lowest one that trains; through all of them when
    # the inputs train (embeddings, prompt or prefix tuning).
    inputs_train = any(
        t.trainable and (t.name == "embed_tokens" or t.name.startswith(("prompt", "prefix")))
        for t in inv.tensors
    )
    lowest = 0 if inputs_train else min(trainable_blocks, default=shape.num_layers)
    dense = 0.0
    for t in inv.tensors:
        if len(t.shape) != 2 or t.name == "embed_tokens" and not shape.tie_word_embeddings:
            continue  # vectors and the embedding lookup cost no matmul
        if t.name.startswith(("prompt", "prefix")) or "adaption_prompt" in t.name:
            continue
        n = t.numel
        through = t.block is None or t.block >= lowest  # a gradient flows through this matmul's input
        dense += 2 * n + (2 * n if through else 0) + (2 * n if t.trainable else 0)
    attention = 0.0
    for layer in range(shape.num_layers):
        attention += 4 * shape.q_dim * (3 if layer >= lowest else 1)
    return FlopsModel(dense, attention)
