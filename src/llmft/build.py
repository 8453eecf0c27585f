"""The trainable model of a config: base weights, activation checkpointing, head, PEFT method, freezing.

``llmft finetune`` builds it to train, ``llmft export`` to load a checkpoint's weights into it: one
function, so both see the same parameter names.
"""

from __future__ import annotations

import logging

from llmft.config import Config
from llmft.distributed.env import DistEnv
from llmft.distributed.loading import load_sharded
from llmft.models.heads import ClassifierSpec, attach_head
from llmft.models.loader import load_causal_lm
from llmft.peft.freeze import apply_freeze
from llmft.peft.methods import apply_method

log = logging.getLogger(__name__)


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder block in backward (non-reentrant, so frozen inputs need no grad hook).

    Newer transformers 5 releases renamed the method; older ones (the GPU image's 5.17) have only the
    first name.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def checkpointed_blocks(model) -> int:
    """How many blocks of ``model`` recompute their forward in backward (transformers marks each
    ``GradientCheckpointingLayer``); counted on the finished model, so a wrapper that lost it shows."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return sum(
        1 for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing
    )


def prepare_model(model, cfg: Config, classifier: ClassifierSpec | None, checkpointing: bool = True):
    """Turn the loaded base into the model that trains (same order whether sharded or not)."""
    from transformers import set_seed

    if checkpointing and cfg.train.gradient_checkpointing:
        # Before the adapters: the base model owns the decoder blocks that recompute; and before
        # sharding, so that each block recomputes inside its own FSDP unit.
        enable_activation_checkpointing(model)
    # Seeded here, just before the first random draw of the run (adapter init; then dropout), so
    # that nothing before it (a preset materialised on first use, say) shifts the stream.
    set_seed(cfg.train.seed)
    if classifier is not None:
        model = attach_head(model, classifier)
    # The method decides what trains (adapters; or every weight), then the freeze strategy narrows it.
    return apply_freeze(apply_method(model, cfg.peft, cfg.task), cfg.freeze)


def build_model(
    cfg: Config, source, env: DistEnv, classifier: ClassifierSpec | None, checkpointing: bool = True
):
    """Load the base and prepare it; under FSDP every rank builds on meta, shards, and rank 0 alone reads
    the weights (:mod:`llmft.distributed.loading`)."""

    def prepare(model):
        return prepare_model(model, cfg, classifier, checkpointing)

    if env.strategy == "fsdp":
        model = load_sharded(source, cfg.model, prepare, cfg.distributed.fsdp, env, classifier)
    else:
        model = prepare(load_causal_lm(source, cfg.model, env.device, classifier))
    if checkpointing and cfg.train.gradient_checkpointing:
        log.info("activation checkpointing on %d blocks", checkpointed_blocks(model))
    return model
