"""RAM-efficient loading for FSDP: only rank 0 reads the checkpoint; every rank receives its shards.

Every rank builds the model on the meta device (no memory), applies the model transforms (activation
checkpointing, PEFT method) and shards it; then rank 0 alone loads the full model on the CPU, applies
the same transforms with the same seed (so adapters start exactly as in a one-process run), and
``set_model_state_dict(..., broadcast_from_rank0=True)`` sends each rank its shards. Host memory: rank
0 holds one full copy on the CPU for the duration of the load, the others only their shards.
"""

from __future__ import annotations

import logging
import resource
import sys
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from llmft.config import FsdpSection, ModelSection
from llmft.distributed.env import DistEnv
from llmft.distributed.parallelize import apply_fsdp, average_unsharded_gradients
from llmft.errors import UserError
from llmft.models.loader import ModelSource, load_causal_lm, model_skeleton
from llmft.models.structure import hf_model

log = logging.getLogger(__name__)


def _peak_host_mib() -> float:
    """This process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _is_meta(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return (tensor.to_local() if isinstance(tensor, DTensor) else tensor).is_meta


def _left_on_meta(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers that still have no storage (a load that missed them)."""
    return [n for n, t in [*model.named_parameters(), *model.named_buffers()] if _is_meta(t)]


def _key_problem(model: nn.Module, reference: nn.Module) -> str | None:
    """Why rank 0's full model and the sharded one differ in weight or buffer names, or None."""
    problems = []
    for what, ours, theirs in (
        ("weights", model.state_dict().keys(), reference.state_dict().keys()),
        ("buffers", dict(model.named_buffers()).keys(), dict(reference.named_buffers()).keys()),
    ):
        missing, unexpected = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        if missing:
            problems.append(f"{len(missing)} {what} missing from the checkpoint (e.g. {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected {what} in the checkpoint (e.g. {unexpected[0]})")
    if _tied(reference) and not _tied(model):
        problems.append("the input and output embeddings are tied in the checkpoint but not when sharded")
    return "; ".join(problems) or None


def _tied(model: nn.Module) -> bool:
    base = hf_model(model)
    output = base.get_output_embeddings()
    return output is not None and output.weight is base.get_input_embeddings().weight


def load_sharded(
    source: ModelSource,
    model_cfg: ModelSection,
    prepare: Callable[[nn.Module], nn.Module],
    fsdp_cfg: FsdpSection,
    env: DistEnv,
    classifier=None,
) -> nn.Module:
    """The model to train, sharded with FSDP2 over ``env.mesh``, with rank 0's weights in the shards.

    Args:
        source / model_cfg: what to load and how.
        prepare: the model transforms of the run (activation checkpointing, seed, PEFT method); applied
            to the meta model on every rank and to the full model on rank 0, identically.
        fsdp_cfg: the FSDP options.
        env: the process layout (its ``mesh``).
        classifier: for ``task: classification``, the classes and head (a ``ClassifierSpec``).

    Raises:
        RuntimeError: if a weight or buffer name differs between checkpoint and model, or anything is
            left on the meta device (a bug, not a user error).
    """
    if model_cfg.quantization == "4bit":  # torchao NF4 (the config refuses bitsandbytes under FSDP)
        return _load_sharded_nf4(source, model_cfg, prepare, fsdp_cfg, env, classifier)
    model = prepare(model_skeleton(source, model_cfg, classifier))
    apply_fsdp(model, fsdp_cfg, env.mesh)
    # Real (uninitialised) storage for this rank's shards: the full tensors never exist here.
    model.to_empty(device="cpu" if fsdp_cfg.cpu_offload else env.device)

    # Prompt and prefix tuning's PeftModel holds the base's embedding a second time, as
    # ``word_embeddings``: the state dict then has one tensor under two names, and DCP's broadcast
    # fills only one of them (the other failed with "mixed torch.Tensor and DTensor"). It is taken out
    # for the load and put back (the shared module gets its weights under its own name).
    alias = model._modules.pop("word_embeddings", None)
    reference = None
    if env.is_main:
        reference = prepare(load_causal_lm(source, model_cfg, torch.device("cpu"), classifier))
        reference._modules.pop("word_embeddings", None)
    _check_names(model, reference, source)
    _receive_weights(model, reference, fsdp_cfg, env)
    del reference
    if alias is not None:
        model._modules["word_embeddings"] = alias

    left = _left_on_meta(model)
    if left:
        raise RuntimeError(f"{len(left)} tensors were left on the meta device after loading: {left[:3]}")
    average_unsharded_gradients(model, env)
    peaks = [None] * env.world_size
    dist.all_gather_object(peaks, round(_peak_host_mib()))
    log.info(
        "loaded on rank 0, sharded over %d processes; peak host memory at load: %s",
        env.world_size,
        ", ".join(f"rank {rank} {mib:,} MiB" for rank, mib in enumerate(peaks)),
    )
    return model


def _check_names(model: nn.Module, reference: nn.Module | None, source: ModelSource) -> None:
    """Raise on every rank when rank 0's full model (``reference``, None elsewhere) and the sharded one
    differ in weight or buffer names; give the sharded model rank 0's generation config.

    Rank 0 alone can compare names; all ranks raise together rather than hang in the broadcast.
    """
    shared = (
        [_key_problem(model, reference), getattr(hf_model(reference), "generation_config", None)]
        if reference
        else [None, None]
    )
    dist.broadcast_object_list(shared, src=0)
    problem, generation_config = shared
    if problem:
        raise RuntimeError(f"loading {source.ref} into the sharded model: {problem}")
    if generation_config is not None:  # causal LMs have one; classifiers do not
        hf_model(model).generation_config = generation_config


def _receive_weights(
    model: nn.Module, reference: nn.Module | None, fsdp_cfg: FsdpSection, env: DistEnv
) -> None:
    """Fill the sharded model's weights and buffers from rank 0's full model (``reference``, None on
    the other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(
        model,
        reference.state_dict() if reference is not None else {},
        options=StateDictOptions(
            full_state_dict=True, broadcast_from_rank0=True, strict=True, cpu_offload=fsdp_cfg.cpu_offload
        ),
    )
    # Buffers that are not in a state dict (rotary inv_freq is non-persistent) were only allocated by
    # to_empty: rank 0 sends its computed values. Written by hand: no torch.distributed helper covers
    # non-persistent buffers. FSDP does not shard buffers, so each is a whole tensor on every rank.
    reference_buffers = dict(reference.named_buffers()) if reference is not None else {}
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if env.is_main:
                buffer.copy_(reference_buffers[name])
            dist.broadcast(buffer, src=0)


def _load_sharded_nf4(
    source: ModelSource,
    model_cfg: ModelSection,
    prepare: Callable[[nn.Module], nn.Module],
    fsdp_cfg: FsdpSection,
    env: DistEnv,
    classifier=None,
) -> nn.Module:
    """A 4-bit base under FSDP: every rank loads the model on its CPU, quantizes the decoder blocks'
    linear weights to torchao NF4 (deterministic, so every rank gets the same codes), applies the
    transforms with the run's seed, and ``fully_shard`` keeps 1/world of the codes and scales on the
    device. Not the rank-0 broadcast of full weights above: ``set_model_state_dict`` would send
    full-precision tensors into NF4 shards, which ``NF4Tensor.copy_`` does not quantize for a DTensor
    shard. The price is host memory: each rank holds one full-precision copy on the CPU while loading.
    """
    from llmft.models.quantize import quantize_nf4_, quantized_base_bytes

    shards = env.mesh.size(env.mesh.ndim - 1) if env.mesh is not None else env.world_size
    if shards == 1:
        # FSDP2's one-rank shortcut (torch 2.13) skips the tensor-subclass all-gather hooks and hands
        # NF4's post-all-gather one tensor instead of three: it crashed at the first forward.
        raise UserError(
            "model.quantization 4bit with distributed.strategy fsdp over 1 shard: FSDP2 cannot gather "
            "torchao's NF4 weights on one rank; use --distributed.strategy single --model.quant_backend "
            "torchao (the same 4-bit base), or launch 2 or more processes"
        )
    model = load_causal_lm(source, model_cfg, torch.device("cpu"), classifier, quantize=False)
    quantize_nf4_(hf_model(model), shards)
    model = prepare(model)
    apply_fsdp(model, fsdp_cfg, env.mesh)  # moves each rank's shards to its device
    average_unsharded_gradients(model, env)
    nbytes, params = quantized_base_bytes(model)
    shares = [None] * env.world_size
    dist.all_gather_object(shares, nbytes)
    log.info(
        "4-bit base as torchao NF4, sharded over %d processes: %s of the quantized weights per rank "
        "(%.3f bytes per local parameter); peak host memory at load %s MiB",
        env.world_size,
        ", ".join(f"{b / 2**20:.2f} MiB" for b in shares),
        nbytes / max(params, 1),
        f"{round(_peak_host_mib()):,}",
    )
    return model
