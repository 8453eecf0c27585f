"""Launched by the distributed tests under torchrun (not a test itself): FSDP with frozen layers.

Builds tiny-llama for full fine-tuning through llmft's own pieces (launch, rank-0 loading into shards,
the Trainer), freezes the two bottom blocks and, inside block 2, the attention only (mixed
requires_grad in one FSDP unit), trains a few steps and writes, per rank, what it holds (parameter and
optimizer-state bytes of its shards) and, on rank 0, which weights changed; then a global batch
without targets (skipped on both ranks) and one with targets on rank 0 only. Then, for the memory
planner, full fine-tuning and LoRA without freezing: one step each, with the bytes of this rank's
parameter, gradient and optimizer-state shards measured between backward and the optimizer step.
Then LoRA with FSDP mixed precision (parameters gathered and computed in bfloat16) against the same
run in float32, and LoRA under DDP with every forward and every gradient all-reduce recorded in order
(accumulation 2: DDP's ``no_sync`` must leave the first micro-batch's backward without one).

    torchrun --nproc_per_node 2 tests/distributed/fsdp_worker.py OUT_DIR
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from llmft.config import DistributedSection, FsdpSection, ModelSection, PeftSection, build_config
from llmft.data.batching import Collator
from llmft.data.pipeline import prepare_data
from llmft.data.tokenize import IGNORE_INDEX
from llmft.distributed.env import DistEnv, setup_distributed, teardown_distributed
from llmft.distributed.loading import load_sharded
from llmft.distributed.parallelize import apply_ddp, local_bytes, optimizer_state_tensors
from llmft.memory.measure import optimizer_state, tensor_bytes
from llmft.models.loader import load_causal_lm, load_tokenizer, resolve_model
from llmft.peft.methods import apply_method
from llmft.train.trainer import Trainer

FROZEN_BLOCKS = (0, 1)
FROZEN_IN_BLOCK_2 = "layers.2.self_attn."


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    model = apply_method(model, PeftSection(method="none"))
    for name, parameter in model.named_parameters():
        if any(f"layers.{i}." in name for i in FROZEN_BLOCKS) or FROZEN_IN_BLOCK_2 in name:
            parameter.requires_grad_(False)
    return model


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {k: v.clone() for k, v in get_model_state_dict(model, options=options).items()}


def measured_terms(source, cfg, env, data, tokenizer, method: str) -> dict[str, int]:
    """This rank's parameter, gradient and optimizer-state bytes in one real FSDP step of ``method``."""
    model = load_sharded(source, cfg.model, lambda m: apply_method(m, PeftSection(method=method)),
                         cfg.distributed.fsdp, env)  # fmt: skip
    trainer = Trainer(model, cfg.train, data.train, None, tokenizer.pad_token_id, env)
    _, micro_batches = next(trainer.global_batches())
    trainer.accumulate_gradients(micro_batches)
    grads = tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
    trainer.optimizer_step()
    return {
        "parameters": tensor_bytes(model.parameters()),
        "gradients": grads,
        "optimizer": tensor_bytes(optimizer_state(trainer.optimizer)),
    }


def lora_losses(source, cfg, env, data, tokenizer, param_dtype: str | None) -> list[float]:
    """The losses of a short FSDP LoRA run with parameters gathered in ``param_dtype``."""
    lora = PeftSection(method="lora", lora={"dropout": 0.0})
    model = load_sharded(source, cfg.model, lambda m: apply_method(m, lora), FsdpSection(param_dtype=param_dtype),
                         env)  # fmt: skip
    return Trainer(model, cfg.train, data.train, None, tokenizer.pad_token_id, env).fit().losses


def ddp_events(source, cfg, env, data, tokenizer, steps: int = 2) -> list[str]:
    """Every forward and every gradient all-reduce (one per bucket) of ``steps`` DDP optimizer steps,
    in order: the all-reduces are counted by a communication hook that wraps DDP's default one."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    events: list[str] = []

    def counting_allreduce(state, bucket):
        events.append("allreduce")
        return allreduce_hook(state, bucket)

    ddp_env = DistEnv(env.rank, env.world_size, env.local_rank, env.device, "ddp")
    model = apply_method(load_causal_lm(source, cfg.model, env.device), PeftSection(method="lora"))
    model = apply_ddp(model, ddp_env)
    model.register_comm_hook(None, counting_allreduce)
    model.register_forward_pre_hook(lambda module, args: events.append("forward"))
    trainer = Trainer(model, cfg.train, data.train, None, tokenizer.pad_token_id, ddp_env)
    for _, micro_batches in itertools.islice(trainer.global_batches(), steps):
        trainer.train_step(micro_batches)
        events.append("step")
    return events


def main(out: Path) -> None:
    cfg = build_config(
        {},
        {"train.max_steps": 3, "train.lr": 1e-3, "train.precision": "fp32", "train.progress": False,
         "train.batch_size": 8, "train.micro_batch_size": 2, "data.max_samples": 48},
    )  # fmt: skip
    source = resolve_model(ModelSection())  # before the process group: presets are written by all
    logged: list[str] = []  # llmft's log lines (rank 0 logs INFO, the other ranks warnings only)
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("llmft").addHandler(handler)
    logging.getLogger("llmft").setLevel(logging.INFO)
    env = setup_distributed(DistributedSection(strategy="fsdp", device="cpu"))
    tokenizer = load_tokenizer(source, cfg.model)
    data = prepare_data(cfg.data, tokenizer, cfg.train.seed)
    model = load_sharded(source, cfg.model, freeze, cfg.distributed.fsdp, env)
    before = full_weights(model)
    trainer = Trainer(model, cfg.train, data.train, None, tokenizer.pad_token_id, env)
    summary = trainer.fit()
    after = full_weights(model)

    # A global batch with no target token on any rank: every rank skips the optimizer step together
    # (no collective left waiting, no weight changed); then one with targets on rank 0 only: both step.
    collate = Collator(tokenizer.pad_token_id)
    example = data.train.examples[env.rank]
    masked = {"input_ids": example.input_ids, "labels": [IGNORE_INDEX] * len(example.labels)}
    skipped = trainer.train_step([collate([masked])] * trainer.accumulation_steps)
    after_skip = full_weights(model)
    mixed = collate([{**masked, "labels": example.labels} if env.rank == 0 else masked])
    stepped = trainer.train_step([mixed] * trainer.accumulation_steps)
    no_targets = {
        "step": skipped.step,
        "loss_is_nan": skipped.loss != skipped.loss,
        "grad_norm": skipped.grad_norm,
        "unchanged": all(torch.equal(after[k], after_skip[k]) for k in after),
        "next_targets": stepped.target_tokens,
        "next_grad_norm": stepped.grad_norm,
    }

    params = list(model.parameters())
    report = {
        "no_targets": no_targets,
        "rank": env.rank,
        "losses": summary.losses,
        "param_bytes_local": local_bytes(params),
        "param_bytes_full": sum(p.numel() * p.element_size() for p in params),
        "optimizer_bytes_local": local_bytes(optimizer_state_tensors(trainer.optimizer)),
        # AdamW keeps two fp32 moments per trainable element.
        "optimizer_bytes_full": sum(2 * p.numel() * 4 for p in params if p.requires_grad),
        "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
    }
    if env.is_main:
        report["changed"] = sorted(k for k in before if not torch.equal(before[k], after[k]))
        report["unchanged"] = sorted(k for k in before if torch.equal(before[k], after[k]))
    report["terms"] = {
        method: measured_terms(source, cfg, env, data, tokenizer, method) for method in ("none", "lora")
    }
    report["lora_losses"] = {
        dtype or "float32": lora_losses(source, cfg, env, data, tokenizer, dtype)
        for dtype in (None, "bfloat16")
    }
    report["ddp_events"] = ddp_events(source, cfg, env, data, tokenizer)
    report["logged"] = logged
    (out / f"rank{env.rank}.json").write_text(json.dumps(report))
    teardown_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
