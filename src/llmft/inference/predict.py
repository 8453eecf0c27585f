"""Classification: label texts with a trained classifier (``llmft predict RUN_DIR --text ...``)."""

from __future__ import annotations

import torch
from torch import nn

from llmft.precision import autocast


@torch.no_grad()
def classify(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    device: torch.device,
    compute_dtype: torch.dtype | None = None,
) -> list[tuple[str, float]]:
    """(label, probability) of each text, tokenized as in training (BOS + text, no EOS), right-padded."""
    was_training = model.training
    model.eval()
    batch = tokenizer(texts, return_tensors="pt", padding=True).to(device)
    try:
        with autocast(device, compute_dtype):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        model.train(was_training)
    probs = logits.float().softmax(-1)
    config = getattr(model, "config", None) or model.get_base_model().config
    names = getattr(config, "id2label", None) or {}
    return [(names.get(int(i), str(int(i))), float(p[i])) for p, i in zip(probs, probs.argmax(-1))]
