"""The planner inside ``llmft finetune``: the estimate of the run's own setup at its start, and the
comparison with the measured peak at its end."""

from __future__ import annotations

from typing import Any

import torch

from llmft.config import Config
from llmft.memory.architectures import shape_from_hf_config
from llmft.memory.estimator import Estimate, Setup, estimate
from llmft.memory.params import LLAMA_LINEARS, METHODS, MethodSpec
from llmft.memory.report import estimate_json, format_estimate, gib
from llmft.precision import label, matmul_precision


def method_spec(cfg: Config, num_layers: int) -> MethodSpec:
    """The planner's view of ``peft`` and ``freeze``: 'none' is full fine-tuning (narrowed by the freeze
    strategy: bottom and head_only are modelled; patterns is counted as full, an upper bound); LoRA keeps
    its settings."""
    method = cfg.peft.method
    if method == "none":
        freeze = cfg.freeze
        if freeze.strategy == "bottom":
            frozen = freeze.num_frozen_layers
            if frozen is None:
                frozen = num_layers - freeze.num_trainable_layers
            return MethodSpec("full", num_frozen_layers=frozen)
        return MethodSpec("full", head_only=freeze.strategy == "head_only")
    if method in ("lora", "qlora"):
        lora = cfg.peft.lora
        targets = LLAMA_LINEARS if lora.target_modules == "all-linear" else tuple(lora.target_modules)
        # The planner models a 4-bit base as qlora and DoRA as dora (an 8-bit base as its storage dtype).
        name = "qlora" if cfg.model.quantization == "4bit" else "dora" if lora.use_dora else "lora"
        return MethodSpec(name, lora_r=lora.r, lora_dropout=lora.dropout, lora_targets=targets)
    return MethodSpec(method if method in METHODS else "lora")


def run_setup(cfg: Config, hf_config: Any, world_size: int, device: torch.device, compute: str) -> Setup:
    """The setup of this run: its model config, method, strategy, batch, precision, checkpointing."""
    dist = cfg.distributed
    replicate = dist.fsdp.hsdp_replicate if dist.strategy == "fsdp" else 1
    strategy = "hsdp" if replicate > 1 else dist.strategy
    memory = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    shape = shape_from_hf_config(hf_config.to_dict(), cfg.model.name)
    return Setup(
        shape=shape,
        method=method_spec(cfg, shape.num_layers),
        strategy=strategy,
        gpus=world_size // replicate,
        nodes=replicate,
        seq_len=cfg.data.max_seq_len,  # padded rows are at most this long; packed rows are this long
        micro_batch=cfg.train.micro_batch_size,
        precision=compute,
        base_dtype=label(cfg.model.dtype),
        fsdp_param_dtype=label(dist.fsdp.param_dtype) if dist.fsdp.param_dtype else None,
        activation_checkpointing=cfg.train.gradient_checkpointing,
        optimizer="adamw",
        cpu_offload=dist.fsdp.cpu_offload,
        attention=cfg.model.attn_implementation,
        packed=cfg.data.batching == "packing",
        device=device.type,
        gpu_memory=memory,
    )


def plan(setup: Setup) -> tuple[Estimate, str]:
    """The estimate and its table (without advice: the run is already launched)."""
    result = estimate(setup)
    return result, format_estimate(result, advice=False)


def compare(result: Estimate, measured: dict[str, float]) -> tuple[dict[str, Any], list[str]]:
    """summary.json's ``memory`` section and the report's lines: estimate vs measured peak (rank 0)."""
    section = {"estimate": estimate_json(result, advice=False), "measured": measured}
    total = result.total_bytes
    if "peak_allocated_mib" in measured:
        allocated = measured["peak_allocated_mib"] * 2**20
        lines = [
            f"Memory (rank 0): estimated {gib(total)} GiB, measured peak {gib(allocated)} GiB allocated "
            f"({gib(measured['peak_reserved_mib'] * 2**20)} GiB reserved by the CUDA caching allocator)"
        ]
    else:
        rss = measured["peak_rss_mib"] * 2**20
        lines = [
            f"Memory (rank 0): estimated {gib(total)} GiB of tensors; measured host RSS peak {gib(rss)} GiB "
            f"(the whole process: Python, torch and the libraries' code and data too)"
        ]
    section["note"] = "measured: rank 0's peak; CUDA max_memory_allocated/reserved, or host RSS (ru_maxrss)"
    return section, lines


def start(cfg: Config, hf_config: Any, env, compute_dtype: torch.dtype | None):
    """Log the run's memory estimate and build the step observer; returns (estimate, observer)."""
    import logging

    from llmft.memory.flops import flops_model
    from llmft.memory.params import inventory
    from llmft.train.observe import Observer, peak_flops

    # The planner models the autocast dtype (fp32: no autocast, never relabelled); the MFU peak is that
    # of the dtype the products run in (llmft.precision.matmul_precision).
    setup = run_setup(cfg, hf_config, env.world_size, env.device, label(compute_dtype or torch.float32))
    result, table = plan(setup)
    log = logging.getLogger("llmft")
    log.info("%s", table)
    matmul = matmul_precision(compute_dtype, cfg.model, cfg.distributed.fsdp)
    peak, source = peak_flops(env.device, matmul, cfg.logging.peak_tflops, cfg.logging.measure_cpu_peak)
    flops = flops_model(setup.shape, inventory(setup.shape, setup.method, setup.storage))
    log.info(
        "FLOPs per token: %.3g dense + %.3g x row length (attention); peak %s",
        flops.dense,
        flops.attention_per_position,
        f"{peak / 1e12:.1f} TFLOP/s per device ({source})" if peak else f"unknown ({source}): no MFU",
    )
    return result, Observer(flops, peak, source, env.world_size, env.device)
