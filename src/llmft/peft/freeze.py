"""Freeze strategies (``freeze.strategy``) for full and partial fine-tuning, and parameter groups.

Which parameter is an embedding, a decoder block, a norm or the head is found from the model itself
(its input/output embeddings, its ``_no_split_modules`` blocks, norm module classes, the classifier
``score``), never from hard-coded LLaMA names, so any HF decoder works.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict

from torch import nn

from llmft.config import FreezeSection
from llmft.errors import UserError
from llmft.models.structure import decoder_blocks, hf_model

log = logging.getLogger(__name__)

ADAPTER_MARKERS = ("lora_", "adaption_", "prompt_encoder", "ia3_", "modules_to_save")


def _classifier_head(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The new (randomly initialised) head of a sequence classifier, with its attribute name."""
    base = hf_model(model)
    for name in ("score", "classifier"):  # HF sequence-classification heads
        head = getattr(base, name, None)
        if isinstance(head, nn.Module):
            return name, head
    return None


def _head_module(model: nn.Module) -> nn.Module | None:
    classifier = _classifier_head(model)
    return classifier[1] if classifier else hf_model(model).get_output_embeddings()


def _norm_parameter_ids(model: nn.Module) -> set[int]:
    return {
        id(p)
        for module in model.modules()
        if "norm" in type(module).__name__.lower()
        for p in module.parameters(recurse=False)
    }


def parameter_groups(model: nn.Module) -> dict[str, str]:
    """Parameter name -> group: embeddings, block N, norms, head, adapters, or other."""
    owner: dict[int, str] = {}
    embeddings = hf_model(model).get_input_embeddings()
    for p in embeddings.parameters():
        owner[id(p)] = "embeddings"
    head = _head_module(model)
    if head is not None:
        for p in head.parameters():
            owner.setdefault(id(p), "head")  # a tied LM head stays "embeddings"
    for index, block in enumerate(decoder_blocks(model)):
        for p in block.parameters():
            owner.setdefault(id(p), f"block {index}")
    for norm_id in _norm_parameter_ids(model):
        owner.setdefault(norm_id, "norms")
    groups = {}
    for name, p in model.named_parameters():
        group = owner.get(id(p), "other")
        # PEFT's trainable copy of a classifier head (score.modules_to_save.default.*) is the head that
        # trains, not an adapter; LoRA weights on the head (lm_head.lora_A) are adapters.
        head_copy = group == "head" and "modules_to_save" in name
        adapter = any(marker in name for marker in ADAPTER_MARKERS)
        groups[name] = "adapters" if adapter and not head_copy else group
    return groups


def describe_groups(model: nn.Module) -> str:
    """One line per group with its trainable and total parameter counts."""
    trainable: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    params = dict(model.named_parameters())
    for name, group in parameter_groups(model).items():
        total[group] += params[name].numel()
        if params[name].requires_grad:
            trainable[group] += params[name].numel()
    order = sorted(
        total, key=lambda g: (not g.startswith("embed"), not g.startswith("block"), _block_index(g), g)
    )
    return "\n".join(
        f"  {group:<12} {trainable[group]:>13,} of {total[group]:>13,} trainable" for group in order
    )


def _block_index(group: str) -> int:
    return int(group.split()[1]) if group.startswith("block ") else 0


def _frozen_block_count(cfg: FreezeSection, layers: int) -> int:
    if cfg.num_frozen_layers is not None:
        count, field = cfg.num_frozen_layers, "freeze.num_frozen_layers"
    else:
        count, field = cfg.num_trainable_layers, "freeze.num_trainable_layers"
    if count > layers:
        raise UserError(
            f"{field}: {count} is more than the model's {layers} decoder blocks; use a number from 0 to {layers}"
        )
    return count if cfg.num_frozen_layers is not None else layers - count


def _pattern_problem(model: nn.Module, names: list[str], pattern: str, field: str) -> str | None:
    if any(re.search(pattern, name) for name in names):
        return None
    classifier = _classifier_head(model)
    head = (
        f"; the head's are {[n for n, _ in classifier[1].named_parameters(classifier[0])]}"
        if classifier
        else ""
    )
    return (
        f"{field}: {pattern!r} matches no parameter name; names look like {names[len(names) // 2]!r}{head} "
        f"(patterns are searched with re.search)"
    )


def _tied_head(model: nn.Module) -> bool:
    base = hf_model(model)
    head = base.get_output_embeddings()
    return head is not None and head.weight is base.get_input_embeddings().weight


def _trains(model: nn.Module, cfg: FreezeSection) -> dict[str, bool]:
    """Parameter name -> whether it trains under ``cfg`` (strategy none: whatever the method left)."""
    if cfg.strategy == "none":
        return {name: p.requires_grad for name, p in model.named_parameters()}
    groups = parameter_groups(model)
    blocks = len(decoder_blocks(model))
    norms = _norm_parameter_ids(model)
    result = {}
    for name, parameter in model.named_parameters():
        group = groups[name]
        if cfg.strategy == "patterns":
            trains = any(re.search(p, name) for p in cfg.include) if cfg.include else True
            trains = trains and not any(re.search(p, name) for p in cfg.exclude)
        elif cfg.strategy == "head_only":
            trains = group == "head"
        else:  # bottom: embeddings and the lowest blocks frozen; higher blocks, final norm and head train
            frozen = _frozen_block_count(cfg, blocks)
            trains = group != "embeddings" and not (
                group.startswith("block ") and _block_index(group) < frozen
            )
        if cfg.strategy != "patterns":
            # A norm inside a frozen block counts in "block N"; train_norms reaches it too.
            trains = (
                trains
                or (cfg.train_embeddings and group == "embeddings")
                or (cfg.train_norms and id(parameter) in norms)
            )
        result[name] = trains
    return result


def _check_patterns_train_something(model: nn.Module, cfg: FreezeSection) -> None:
    """Patterns that freeze everything, or a classifier's new random head, are mistakes: say so before
    the weights load (a frozen random head would score with random weights for the whole run)."""
    trains = _trains(model, cfg)
    if not any(trains.values()):
        raise UserError(
            f"freeze.include {cfg.include} / freeze.exclude {cfg.exclude} leave no parameter trainable; "
            f"widen freeze.include or narrow freeze.exclude"
        )
    classifier = _classifier_head(model)
    if classifier is None:
        return
    attr, head = classifier
    head_ids = {id(p) for p in head.parameters()}
    head_trains = {n: trains[n] for n, p in model.named_parameters() if id(p) in head_ids}
    if not any(head_trains.values()):
        raise UserError(
            f"freeze.include {cfg.include} / freeze.exclude {cfg.exclude} freeze the classifier's new, "
            f"randomly initialised head ({', '.join(head_trains)}): it would score with random weights; add "
            f"'{attr}' to freeze.include (and keep it out of freeze.exclude)"
        )
    if not all(head_trains.values()):  # a frozen random layer under trained ones: allowed, but say so
        log.warning(
            "freeze.include/exclude leave part of the new classifier head frozen at its random init: %s",
            ", ".join(n for n, t in head_trains.items() if not t),
        )


def check_freeze(model: nn.Module, cfg: FreezeSection) -> None:
    """Raise a UserError if ``cfg`` cannot apply to ``model`` (which may live on the meta device)."""
    if cfg.strategy == "bottom":
        _frozen_block_count(cfg, len(decoder_blocks(model)))
    if cfg.strategy == "head_only" and _head_module(model) is None:
        raise UserError("freeze.strategy head_only: the model has no output head to train")
    if cfg.strategy in ("head_only", "bottom") and _tied_head(model) and not cfg.train_embeddings:
        raise UserError(
            f"freeze.strategy {cfg.strategy}: the LM head shares its weight with the token embeddings (tied), "
            f"so the head cannot train while the embeddings stay frozen; add --freeze.train_embeddings true"
        )
    if cfg.strategy == "patterns":
        names = [name for name, _ in model.named_parameters()]
        for field, patterns in (("freeze.include", cfg.include), ("freeze.exclude", cfg.exclude)):
            for pattern in patterns:
                problem = _pattern_problem(model, names, pattern, field)
                if problem:
                    raise UserError(problem)
        _check_patterns_train_something(model, cfg)


def apply_freeze(model: nn.Module, cfg: FreezeSection) -> nn.Module:
    """Set ``requires_grad`` by ``cfg.strategy`` (after the method, which made everything trainable)."""
    if cfg.strategy == "none":
        return model
    check_freeze(model, cfg)
    trains = _trains(model, cfg)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(trains[name])
    return model
