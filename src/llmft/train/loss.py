"""The causal-LM loss as a sum over target tokens, so that normalisation is the caller's choice.

Gradient accumulation must weight every target token of the global batch equally: the objective is
``sum of token losses / number of target tokens in the whole global batch``. A mean per micro-batch
averaged over micro-batches (a "mean of means") over-weights tokens of short micro-batches; summing
here and dividing once by the global count avoids it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmft.data.tokenize import IGNORE_INDEX


def shift_labels(labels_BT: torch.Tensor) -> torch.Tensor:
    """Targets aligned with logits: position t predicts token t+1; the last position predicts nothing.

    Shifting the labels (one int column) instead of slicing the logits avoids copying the B x T x V
    logits tensor.
    """
    return F.pad(labels_BT[:, 1:], (0, 1), value=IGNORE_INDEX)


def count_targets(labels_BT: torch.Tensor) -> int:
    """Number of target tokens in a batch (labels after the shift that are not ignored)."""
    return int((labels_BT[:, 1:] != IGNORE_INDEX).sum())


def token_loss_sum(logits_BTV: torch.Tensor, labels_BT: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropy of every target token, computed in fp32 whatever the logits dtype."""
    targets_BT = shift_labels(labels_BT)
    return F.cross_entropy(
        logits_BTV.flatten(0, 1).float(),
        targets_BT.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def class_loss_sum(logits_BC: torch.Tensor, classes_B: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropy of every classified row (rows with class -100 are fillers), in fp32."""
    return F.cross_entropy(logits_BC.float(), classes_B, ignore_index=IGNORE_INDEX, reduction="sum")


def classification_metrics(
    predicted: torch.Tensor, expected: torch.Tensor, num_classes: int
) -> dict[str, float]:
    """Accuracy and macro-F1: the mean F1 over the classes that occur (in the labels or the predictions),
    as scikit-learn's ``f1_score(average="macro")``.

    Written out (a few lines) rather than pulling in scikit-learn or `evaluate` for two numbers.
    """
    keep = expected != IGNORE_INDEX
    predicted, expected = predicted[keep], expected[keep]
    accuracy = float((predicted == expected).float().mean()) if len(expected) else 0.0
    scores = []
    for c in range(num_classes):
        true_positive = int(((predicted == c) & (expected == c)).sum())
        predicted_c, expected_c = int((predicted == c).sum()), int((expected == c).sum())
        if predicted_c + expected_c:
            scores.append(2 * true_positive / (predicted_c + expected_c))
    return {"eval_accuracy": accuracy, "eval_macro_f1": sum(scores) / len(scores) if scores else 0.0}
