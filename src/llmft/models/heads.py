"""Task heads: the classifier of ``task: classification`` on the pooled last non-padding token.

The model is transformers' own ``AutoModelForSequenceClassification`` (for LLaMA:
``LlamaForSequenceClassification``), which pools the last token that is not padding and applies its
``score`` layer. ``head.type: linear`` keeps that layer, so plain transformers loads the exported folder
with its label names (``config.id2label``). ``head.type: mlp`` replaces ``score`` with new fully connected
layers; the folder then records them in ``config.json`` (``llmft_head``) and ``classifier.json``, which
``llmft predict`` reads to rebuild the head (plain transformers loads the backbone only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llmft.config import HeadSection

CLASSIFIER_FILE = "classifier.json"
_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class ClassifierSpec:
    """The classes (names, in index order), the head, and the pad id the pooling looks for."""

    labels: tuple[str, ...]
    head: HeadSection
    pad_token_id: int

    def config_kwargs(self) -> dict:
        """The ``from_pretrained`` / ``AutoConfig`` overrides of a classifier with these classes."""
        return {
            "num_labels": len(self.labels),
            "id2label": dict(enumerate(self.labels)),
            "label2id": {label: i for i, label in enumerate(self.labels)},
            "pad_token_id": self.pad_token_id,
        }

    def to_json(self) -> dict:
        return {
            "labels": list(self.labels),
            "head": self.head.model_dump(),
            "pad_token_id": self.pad_token_id,
        }

    @classmethod
    def read(cls, folder: Path) -> ClassifierSpec:
        data = json.loads((folder / CLASSIFIER_FILE).read_text(encoding="utf-8"))
        return cls(tuple(data["labels"]), HeadSection(**data["head"]), data["pad_token_id"])


def mlp_head(head: HeadSection, hidden: int, classes: int, device=None) -> nn.Sequential:
    """``num_layers`` linear layers (dropout before each, the activation between them)."""
    width = head.width or hidden
    layers: list[nn.Module] = []
    size = hidden
    for _ in range(head.num_layers - 1):
        layers += [
            nn.Dropout(head.dropout),
            nn.Linear(size, width, device=device),
            _ACTIVATIONS[head.activation](),
        ]
        size = width
    layers += [nn.Dropout(head.dropout), nn.Linear(size, classes, device=device)]
    return nn.Sequential(*layers)


def _inputs_in_head_dtype(module: nn.Module, args: tuple) -> tuple:
    dtype = next(module.parameters()).dtype
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def fp32_head(head: nn.Module) -> nn.Module:
    """Keep a trainable head in fp32 whatever the backbone's dtype (bf16 updates of small steps round
    away); its input is cast to the head's dtype on the way in, so it also runs without autocast."""
    head.float()
    head.register_forward_pre_hook(_inputs_in_head_dtype)
    return head


def attach_head(model: nn.Module, spec: ClassifierSpec) -> nn.Module:
    """Give ``model`` (a sequence classifier) a freshly initialised fp32 head from the current RNG.

    Called after the run's seed is set, so the head is the same in every run and on every rank
    (transformers would initialise a missing ``score`` from whatever the RNG held at load time).
    """
    config = model.config
    weight = model.score.weight
    if spec.head.type == "linear":
        nn.init.normal_(weight, mean=0.0, std=getattr(config, "initializer_range", 0.02))
        fp32_head(model.score)
        return model
    model.score = fp32_head(mlp_head(spec.head, config.hidden_size, len(spec.labels), device=weight.device))
    config.llmft_head = spec.head.model_dump()
    return model
