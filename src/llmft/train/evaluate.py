"""Evaluation: the model's logits of a collated batch, and the loss over a whole split.

The trainer's periodic evaluation and ``llmft eval`` both run :func:`evaluate_split`, and training's
forward pass is :func:`forward_logits` too, so the numbers of all three agree.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from llmft.data.tokenize import IGNORE_INDEX
from llmft.precision import autocast
from llmft.train.loss import class_loss_sum, classification_metrics, count_targets, token_loss_sum

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


def model_inputs(batch: Batch) -> Batch:
    """The model's inputs of a collated batch.

    Packed rows carry ``position_ids`` and go in without a 2-D attention mask: transformers then
    derives a block-diagonal causal mask from the position resets, so documents in a row do not
    attend to each other (see :mod:`llmft.data.batching`). Their ``attention_mask`` only marks real
    tokens for counting.
    """
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def batch_targets(batch: Batch) -> int:
    """Targets of a micro-batch: shifted label tokens, or classified rows (fillers have -100)."""
    if "class_labels" in batch:
        return int((batch["class_labels"] != IGNORE_INDEX).sum())
    return count_targets(batch["labels"])


def forward_logits(model: nn.Module, batch: Batch, device: torch.device, compute_dtype: torch.dtype | None):
    """The model's logits of a collated batch (already on ``device``), under autocast when
    ``compute_dtype`` is set; training and evaluation both call this."""
    with autocast(device, compute_dtype):
        logits = model(**model_inputs(batch), use_cache=False).logits
    # Prompt tuning prepends virtual tokens and PEFT returns their logits too: keep the real tokens'.
    length = batch["input_ids"].shape[1]
    return logits[:, -length:] if logits.ndim == 3 and logits.shape[1] != length else logits


@torch.no_grad()
def evaluate_split(
    model: nn.Module, loader, device: torch.device, compute_dtype: torch.dtype | None = None
) -> dict[str, float]:
    """Loss per target over every batch of ``loader``, and its perplexity (causal LM) or its accuracy
    and macro-F1 (classification). The trainer's evaluation and ``llmft eval`` both run this, so their
    numbers agree."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    targets = 0
    predicted, expected = [], []
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        logits = forward_logits(model, batch, device, compute_dtype)
        if "class_labels" in batch:
            total += class_loss_sum(logits, batch["class_labels"])
            predicted.append(logits.argmax(-1).cpu())
            expected.append(batch["class_labels"].cpu())
        else:
            total += token_loss_sum(logits, batch["labels"])
        targets += batch_targets(batch)
    model.train(was_training)
    if targets == 0:
        # A loss over no target is undefined; 0.0 would read as a perfect model.
        log.warning("evaluation: the validation split has no target token; eval_loss is NaN")
        return {"eval_loss": math.nan, "eval_ppl": math.nan}
    loss = float(total) / targets
    if predicted:
        num_classes = int(logits.shape[-1])
        return {
            "eval_loss": loss,
            **classification_metrics(torch.cat(predicted), torch.cat(expected), num_classes),
        }
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0))}


def describe_eval(row: dict[str, float]) -> str:
    """An evaluation row in words: loss and perplexity, or loss, accuracy and macro-F1."""
    if "eval_accuracy" in row:
        return (
            f"eval loss {row['eval_loss']:.4f}, accuracy {100 * row['eval_accuracy']:.1f}%, "
            f"macro-F1 {row['eval_macro_f1']:.3f}"
        )
    return f"eval loss {row['eval_loss']:.4f} (perplexity {row['eval_ppl']:.1f})"
