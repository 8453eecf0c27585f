"""Generation-based evaluation: greedy answers to validation prompts, scored with task metrics.

Used by the trainer at each evaluation (:class:`GenerationEval`, an eval hook) and by ``llmft eval``
(:func:`answer_and_score`), so both compute the same numbers the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
from torch import nn

from llmft.config import EvalSection
from llmft.distributed.env import DistEnv
from llmft.evaluation.metrics import metric_names, task_metrics
from llmft.inference.generate import generate_completions
from llmft.inference.prompts import clean_reference
from llmft.models.structure import unwrap

log = logging.getLogger("llmft")


def answer_and_score(
    model: nn.Module,
    tokenizer,
    format_name: str,
    items: Sequence[tuple[str, Sequence[str]]],
    max_new_tokens: int,
    device: torch.device,
    compute_dtype: torch.dtype | None = None,
    synced_gpus: bool = False,
) -> tuple[dict[str, float], list[dict]]:
    """Greedy completions of each (prompt, references) item and the format's task metrics of them.

    Returns (``{"eval_<metric>": value}``, one ``{prompt, completion, references}`` per item). Items are
    answered one at a time: a batch would need left padding, which can change greedy choices at near
    ties, and then ``llmft generate`` and the metrics would not agree token for token.
    """
    generations = []
    for prompt, references in items:
        completion = generate_completions(
            model,
            tokenizer,
            prompt,
            max_new_tokens=max_new_tokens,
            device=device,
            compute_dtype=compute_dtype,
            synced_gpus=synced_gpus,
        )[0]
        generations.append(
            {
                "prompt": prompt,
                "completion": completion.strip(),
                "references": [clean_reference(r, tokenizer) for r in references],
            }
        )
    scores = task_metrics(
        format_name, [g["completion"] for g in generations], [g["references"] for g in generations]
    )
    return {f"eval_{name}": value for name, value in scores.items()}, generations


class GenerationEval:
    """The trainer's eval hook: task metrics of greedy answers to the first ``max_generations``
    validation prompts, and ``log_samples`` of them as (prompt, completion, references).

    Under FSDP every rank generates (the same prompts, greedy, so the same tokens) because each forward
    gathers weights from all ranks (``synced_gpus``); under DDP rank 0 alone generates, on the module
    inside the DDP wrapper; only rank 0's row is logged.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        format_name: str,
        val_prompts: Sequence[tuple[str, Sequence[str]]],
        cfg: EvalSection,
        env: DistEnv,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.format_name = format_name
        self.items = list(val_prompts)[: cfg.max_generations]
        self.cfg = cfg
        self.env = env
        self.compute_dtype = compute_dtype
        self.synced_gpus = env.strategy == "fsdp" and env.world_size > 1

    def __call__(self, step: int) -> dict:
        if not self.env.is_main and not self.synced_gpus:
            return {}
        started = time.perf_counter()
        metrics, generations = answer_and_score(
            unwrap(self.model),
            self.tokenizer,
            self.format_name,
            self.items,
            self.cfg.max_new_tokens,
            self.env.device,
            self.compute_dtype,
            self.synced_gpus,
        )
        row: dict = {**metrics, "eval_generate_s": time.perf_counter() - started}
        if self.cfg.log_samples:
            row["eval_samples"] = generations[: self.cfg.log_samples]
        if self.env.is_main:
            values = ", ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items())
            log.info(
                "step %d: %s on %d generated answers (%.1fs)",
                step,
                values,
                len(generations),
                row["eval_generate_s"],
            )
        return row


def generation_eval_hook(
    model: nn.Module,
    tokenizer,
    data,
    cfg: EvalSection,
    env: DistEnv,
    compute_dtype: torch.dtype | None,
    task: str,
) -> GenerationEval | None:
    """The eval hook of a run, or None where it has none: ``eval.task_metrics`` off, a classifier head
    (accuracy and F1 come from its logits), a plain-text format, or no validation prompts."""
    if not cfg.task_metrics or task != "causal_lm" or not cfg.max_generations:
        return None
    if not metric_names(data.format.name) or not data.val_prompts:
        return None
    return GenerationEval(model, tokenizer, data.format.name, data.val_prompts, cfg, env, compute_dtype)
