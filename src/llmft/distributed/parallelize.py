"""Parallelize a model for its strategy: FSDP2 (``fully_shard``), DDP, or nothing.

Order of operations for FSDP (each step needs the one before):
 1. build the model, on the meta device (:mod:`llmft.distributed.loading`);
 2. activation checkpointing, once, on the decoder blocks (transformers' own switch), so that the
    recompute happens inside each block's FSDP unit and re-gathers its parameters in backward;
 3. the PEFT method: adapters are parameters of the blocks, so they are sharded with them;
 4. ``fully_shard`` per decoder block, then the root (embeddings, final norm, head);
 5. weights arrive from rank 0 into the shards (:func:`llmft.distributed.loading.load_sharded`).

Gradients: DDP and FSDP *average* gradients over the processes, whereas the trainer's loss is already
normalised by the global number of target tokens and wants them *summed*; the trainer multiplies each
micro-batch's loss by the world size to undo the average (see ``Trainer.accumulate_gradients``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from llmft.config import FsdpSection
from llmft.distributed.env import DistEnv
from llmft.models.structure import decoder_blocks, hf_model, unwrap
from llmft.precision import DTYPES

log = logging.getLogger(__name__)


def apply_fsdp(model: nn.Module, cfg: FsdpSection, mesh) -> nn.Module:
    """Shard ``model`` in place with FSDP2: one unit per decoder block, then the root.

    Gradients are reduced in float32 whatever ``param_dtype`` is, so that summing many ranks' low
    precision gradients loses nothing. The root unit is the transformers model (inside a PeftModel),
    whose forward ``generate`` calls directly: its hooks must run there to gather the embeddings.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mixed_precision = MixedPrecisionPolicy(
        param_dtype=DTYPES[cfg.param_dtype] if cfg.param_dtype else None, reduce_dtype=torch.float32
    )
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cfg.cpu_offload else OffloadPolicy()
    options = dict(mesh=mesh, mp_policy=mixed_precision, offload_policy=offload)
    blocks = decoder_blocks(model)
    for block in blocks:
        fully_shard(block, reshard_after_forward=cfg.reshard_after_forward, **options)
    # The root is all-gathered first in forward and used last (the head), so resharding it after
    # forward would only gather it again at once for backward: keep it, as torchtitan does.
    fully_shard(hf_model(model), reshard_after_forward=False, ignored_params=_replicated(model), **options)
    log.info(
        "fsdp: %d %s units + root over mesh %s (param dtype %s, reduce float32%s%s)",
        len(blocks),
        type(blocks[0]).__name__,
        tuple(mesh.shape) if mesh is not None else "default",
        cfg.param_dtype or "as stored",
        ", parameters kept after forward" if not cfg.reshard_after_forward else "",
        ", CPU offload" if cfg.cpu_offload else "",
    )
    return model


def _replicated(model: nn.Module) -> set[nn.Parameter]:
    """Frozen parameters kept whole on every rank instead of sharded: prompt tuning's PeftModel embeds
    the input ids itself, before the FSDP root (the transformers model) gathers its weights, and FSDP2
    lets no other unit run before the root; so the (frozen) input embedding stays unsharded."""
    peft_model = unwrap(model)
    config = getattr(peft_model, "active_peft_config", None)
    if getattr(config, "is_prompt_learning", False) and str(config.peft_type) != "PREFIX_TUNING":
        return set(hf_model(model).get_input_embeddings().parameters())
    return set()


def average_unsharded_gradients(model: nn.Module, env: DistEnv) -> list[str]:
    """Average over the ranks the gradients of trainable parameters that no FSDP unit holds.

    Prompt and prefix tuning train a prompt encoder that lives in the PeftModel, outside the FSDP
    root: it is tiny, so it is replicated, and each gradient is averaged as it is computed (a tensor
    hook, so accumulation over micro-batches sums averaged gradients, as FSDP's reduce-scatter does).
    Written by hand: FSDP2 covers only what it shards, and a DDP wrapper around one submodule would
    not see the PeftModel's own forward. Returns the names of those parameters.
    """
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    def average(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)  # SUM: gloo has no AVG
        return grad / env.world_size

    names = []
    for name, parameter in unwrap(model).named_parameters():
        if parameter.requires_grad and not isinstance(parameter, DTensor):
            parameter.register_hook(average)
            names.append(name)
    return names


def apply_ddp(model: nn.Module, env: DistEnv) -> nn.Module:
    """Replicate ``model`` in every process with DDP (its weights are broadcast from rank 0)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model,
        device_ids=[env.device.index] if env.device.type == "cuda" else None,
        # The model's buffers (rotary frequencies) never change: no broadcast before every forward.
        broadcast_buffers=False,
    )


def gradient_sync(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Context for one micro-batch's backward: ``enabled`` on the last micro-batch of a step.

    DDP skips its all-reduce (``no_sync``) on the other micro-batches and reduces the accumulated
    gradient once. FSDP reduce-scatters every micro-batch on purpose: skipping it would keep each
    rank's whole unsharded gradient until the last micro-batch, the memory FSDP exists to save.
    """
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel) and not enabled:
        return model.no_sync()
    return contextlib.nullcontext()


def clip_grad_norm_(parameters: list[nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm (over all processes and shards); returns it before clipping.

    ``torch.nn.utils.get_total_norm`` on FSDP's sharded (DTensor) gradients gives a DTensor whose
    ``full_tensor()`` reduces the partial norms over the ranks; for plain tensors this is exactly
    ``clip_grad_norm_``.
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in parameters if p.grad is not None]
    # Sharded (DTensor) and replicated (prompt encoder) gradients are normed apart and combined: one
    # norm over a mix of both is an error.
    sharded = [g for g in grads if isinstance(g, DTensor)]
    plain = [g for g in grads if not isinstance(g, DTensor)]
    if not grads:
        return 0.0  # no gradient at all (e.g. a batch without target tokens): nothing to clip
    norms = []
    if sharded:
        norm = torch.nn.utils.get_total_norm(sharded, norm_type=2.0)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    if plain:
        norms.append(torch.nn.utils.get_total_norm(plain, norm_type=2.0))
    total = torch.linalg.vector_norm(torch.stack(norms)) if len(norms) > 1 else norms[0]
    if sharded and plain:
        torch.nn.utils.clip_grads_with_norm_(
            [p for p in parameters if isinstance(p.grad, DTensor)], max_norm, total
        )
        torch.nn.utils.clip_grads_with_norm_(
            [p for p in parameters if p.grad is not None and not isinstance(p.grad, DTensor)], max_norm, total
        )
    else:
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return float(total)


def full_state_dict(model: nn.Module, env: DistEnv) -> dict[str, torch.Tensor] | None:
    """Gather an FSDP model's full weights onto rank 0's CPU (all ranks must call); None otherwise.

    For a PeftModel only the trainable weights (the adapter) are gathered: that is all it saves.
    """
    if env.strategy != "fsdp":
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    is_peft = hf_model(model) is not unwrap(model)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=is_peft)
    return get_model_state_dict(model, options=options)


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes this process holds of ``tensors`` (only its own shard of a DTensor)."""
    from torch.distributed.tensor import DTensor

    total = 0
    for tensor in tensors:
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        total += local.numel() * local.element_size()
    return total


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    """The optimizer's per-parameter state tensors (e.g. AdamW's moments), without the step counts."""
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.ndim > 0:
                yield value
