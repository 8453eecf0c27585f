"""The planner's output: a per-rank table for people, a stable JSON document for machines, and the
comparison of an estimate with what a run measured.

JSON keys (``schema`` ``llmft.estimate/1``; documented in docs/memory.md; new keys may be added,
existing ones keep their meaning):
``model``, ``setup``, ``parameters`` {total, trainable}, ``per_rank_bytes`` {parameters, gradients,
optimizer_states, activations, autocast_weight_copies, temporary_buffers, cuda_context, total},
``temporary_bytes`` (by buffer), ``host_bytes`` {load_rank0, load_other_ranks, offload},
``gpu_memory_bytes``, ``fits``, ``suggestions`` [{change, flags, total_bytes}].
"""

from __future__ import annotations

import re
from typing import Any

from llmft.errors import UserError
from llmft.memory.estimator import Estimate, suggestions

SCHEMA = "llmft.estimate/1"
_UNITS = {"": 2**30, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}  # fmt: skip


def parse_size(text: str, flag: str = "--gpu-memory") -> float:
    """Bytes of ``24GiB``, ``80GB``, ``16G`` (GiB) or ``24`` (GiB)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise UserError(f"{flag} '{text}' is not a memory size; write it like 24GiB, 80GB or 16G")
    return float(match.group(1)) * _UNITS[unit]


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f}"


def _method_text(est: Estimate) -> str:
    spec = est.setup.method
    if spec.is_lora:
        return f"{spec.name} (r {spec.lora_r} on {len(spec.lora_targets)} projections)"
    if spec.num_frozen_layers:
        return f"full, bottom {spec.num_frozen_layers} blocks frozen"
    return "full, head only" if spec.head_only else spec.name


def _base_text(est: Estimate) -> str:
    """QLoRA's block projections are NF4 whatever --base-dtype says; it sets the rest of the base."""
    if est.setup.method.name == "qlora":
        return f"NF4 (embeddings, norms and head {est.setup.storage})"
    return est.setup.storage


def describe_setup(est: Estimate) -> str:
    s = est.setup
    return (
        f"{s.shape.name}, {_method_text(est)}, {s.strategy} on {s.gpus} "
        f"{'GPU(s)' if s.device == 'cuda' else 'process(es)'} x {s.nodes} node(s), "
        f"{s.micro_batch} x {s.seq_len} tokens per micro-batch{' (packed)' if s.packed else ''}, "
        f"{s.precision} compute, base {_base_text(est)}, "
        f"{s.optimizer}{', activation checkpointing' if s.activation_checkpointing else ''}"
        f"{', CPU offload' if s.cpu_offload else ''}"
    )


def rows(est: Estimate) -> list[tuple[str, float]]:
    return [
        ("parameters", est.parameter_bytes),
        ("gradients", est.gradient_bytes),
        ("optimizer states", est.optimizer_bytes),
        ("activations", est.activation_bytes),
        ("autocast weight copies", est.autocast_copy_bytes),
        ("temporary buffers", est.temporary_bytes),
        ("CUDA context", est.cuda_context_bytes),
        ("total", est.total_bytes),
    ]


def format_estimate(est: Estimate, advice: bool = True) -> str:
    """The table that ``llmft estimate`` prints (and every run logs at its start)."""
    share = 100 * est.trainable_parameters / max(est.parameters, 1)
    lines = [
        f"Memory estimate: {describe_setup(est)}",
        f"parameters {est.parameters:,}, trainable {est.trainable_parameters:,} ({share:.2f}%)",
        f"  {'per rank (' + ('GPU' if est.setup.device == 'cuda' else 'CPU') + ')':<24}{'GiB':>9}",
    ]
    for name, value in rows(est):
        extra = ""
        if name == "temporary buffers" and est.temporary:
            extra = "  (" + ", ".join(f"{k} {gib(v)}" for k, v in est.temporary.items()) + ")"
        lines.append(f"  {name:<24}{gib(value):>9}{extra}")
    host = f"host memory at load: rank 0 {gib(est.host_load_rank0)} GiB"
    if est.setup.world_size > 1:
        host += f", each other rank {gib(est.host_load_other)} GiB"
    if est.host_offload:
        host += f" (of which {gib(est.host_offload)} GiB offloaded shards and optimizer, kept all run)"
    lines.append(host)
    memory = est.setup.gpu_memory
    if memory is not None:
        if est.fits:
            lines.append(f"fits in {gib(memory)} GiB ({gib(memory - est.total_bytes)} GiB to spare)")
        else:
            lines.append(f"does NOT fit in {gib(memory)} GiB (needs {gib(est.total_bytes)} GiB)")
            found = suggestions(est.setup) if advice else []
            if found:
                lines.append("changes that would fit, smallest first:")
                lines += [f"  - {s.change} ({' '.join(s.flags)}): {gib(s.total_bytes)} GiB" for s in found]
            elif advice:
                lines.append("no single change or combination of the planner's changes fits; use more GPUs")
    return "\n".join(lines)


def estimate_json(est: Estimate, advice: bool = True) -> dict[str, Any]:
    s = est.setup
    per_rank = dict(zip(
        ("parameters", "gradients", "optimizer_states", "activations", "autocast_weight_copies",
         "temporary_buffers", "cuda_context", "total"), (round(v) for _, v in rows(est)), strict=True))  # fmt: skip
    return {
        "schema": SCHEMA,
        "model": s.shape.to_dict(),
        "setup": {
            "method": s.method.name,
            "lora_r": s.method.lora_r if s.method.is_lora else None,
            "num_frozen_layers": s.method.num_frozen_layers,
            "head_only": s.method.head_only,
            "strategy": s.strategy,
            "gpus_per_node": s.gpus,
            "nodes": s.nodes,
            "world_size": s.world_size,
            "seq_len": s.seq_len,
            "micro_batch": s.micro_batch,
            "precision": s.precision,
            "base_dtype": s.storage,
            "fsdp_param_dtype": s.fsdp_param_dtype,
            "activation_checkpointing": s.activation_checkpointing,
            "optimizer": s.optimizer,
            "cpu_offload": s.cpu_offload,
            "attention": s.attention,
            "packed": s.packed,
            "device": s.device,
        },
        "parameters": {"total": est.parameters, "trainable": est.trainable_parameters},
        "per_rank_bytes": per_rank,
        "temporary_bytes": {k: round(v) for k, v in est.temporary.items()},
        "host_bytes": {
            "load_rank0": round(est.host_load_rank0),
            "load_other_ranks": round(est.host_load_other),
            "offload": round(est.host_offload),
        },
        "gpu_memory_bytes": None if s.gpu_memory is None else round(s.gpu_memory),
        "fits": est.fits,
        "suggestions": [
            {"change": x.change, "flags": list(x.flags), "total_bytes": round(x.total_bytes)}
            for x in (suggestions(s) if advice else [])
        ],
    }
