"""Quantized frozen bases: bitsandbytes 4-bit / 8-bit for one process and DDP, torchao NF4 for FSDP.

Why two libraries: bitsandbytes (``BitsAndBytesConfig`` in ``from_pretrained``) is what transformers,
PEFT, llama-recipes and axolotl use, runs on CPU and CUDA, and PEFT has LoRA/DoRA/IA3 layers for its
``Linear4bit`` / ``Linear8bitLt``. But its packed ``Params4bit`` keeps the quantization state (block
scales) outside the tensor, so FSDP2's ``fully_shard`` cannot split it. torchao's ``NF4Tensor`` is a
tensor subclass that carries codes and scales together and implements FSDP2's all-gather extension
(``fsdp_pre_all_gather`` / ``fsdp_post_all_gather``): each rank stores 1/world of the codes and scales
and gathers the 4-bit payload, not bf16 weights, before each block runs. That is torchtune's QLoRA
under FSDP2; the format is the same NF4 with double-quantized scales (QLoRA's recipe).

On an NF4 base, PEFT's ordinary ``lora.Linear`` wraps the ``nn.Linear`` whose weight is the
``NF4Tensor``: the base forward is ``F.linear(x, weight)``, which NF4Tensor implements (dequantize
to the input dtype, multiply; its backward never makes a weight gradient). PEFT's own torchao
dispatcher (``peft/tuners/lora/torchao.py``) is not used: it only matches ``TorchAOBaseTensor``
subclasses (int8 weight-only), which NF4Tensor is not, and it adds nothing for training.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import torch
from torch import nn

from llmft.config import ModelSection
from llmft.models.structure import decoder_blocks
from llmft.precision import DTYPES

log = logging.getLogger(__name__)

NF4_BLOCK = 64  # values per absmax block (QLoRA's and torchao's default)


def compute_dtype(cfg: ModelSection) -> torch.dtype:
    """The dtype 4-bit weights are dequantized to for the matmul: model.compute_dtype, else model.dtype."""
    return DTYPES[cfg.compute_dtype or cfg.dtype]


def bnb_config(cfg: ModelSection, skip_modules: list[str] | None = None):
    """transformers' ``BitsAndBytesConfig`` for ``model.quantization`` (None when not quantized).

    Args:
        cfg: the model section (quantization, quant_type, double_quant, compute_dtype).
        skip_modules: modules to keep unquantized besides the LM head (e.g. a classifier's ``score``,
            which the run re-initialises and trains).
    """
    if cfg.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    skip = ["lm_head", *(skip_modules or [])]
    if cfg.quantization == "8bit":
        # LLM.int8 multiplies in fp16 by design; bitsandbytes says so on every forward of every layer.
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(cfg),
        llm_int8_skip_modules=skip,
    )


def keep_cpu_layout_(model: nn.Module) -> nn.Module:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit weights (bitsandbytes 0.50).

    On CPUs with AVX512-BF16, ``Linear4bit.forward`` in eval mode without gradients repacks its weight
    in place into a CPU GEMM layout, which asserts out-features divisible by 32 (the tiny model's
    k/v projections and 688-wide MLP are not: evaluation crashed) and leaves a training run with a
    weight in another layout after each evaluation. Training runs keep the one layout.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def prepare_kbit(model: nn.Module) -> nn.Module:
    """PEFT's k-bit preparation of a bitsandbytes base: freeze it, norms and other unquantized weights
    in float32 (small, and where low precision hurts most). Input gradients for checkpointing are not
    needed: llmft checkpoints non-reentrantly, which back-propagates into frozen inputs."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def is_bnb_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds bitsandbytes 4-bit or 8-bit weights."""
    return any(type(p).__name__ in ("Params4bit", "Int8Params") for p in model.parameters())


def is_quantized_tensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` (or an FSDP shard of it) is a quantized weight: bitsandbytes or torchao NF4."""
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        tensor = tensor.to_local()
    return type(tensor).__name__ in ("Params4bit", "Int8Params", "NF4Tensor")


def _scaler_block_size(num_blocks: int, shards: int) -> int:
    """torchao's second-level (scale) block size, or 0 if none fits.

    Its default 256 where the number of blocks splits into whole groups that split evenly over 8 shards,
    else the largest power of two that does (small layers such as the tiny model's 688-wide MLP have
    2752 = 64 x 43 blocks). Chosen without looking at ``shards`` when it divides 8, so a 1-process and a
    2-process run quantize identically (same codes, comparable losses); larger worlds need their own.
    """
    groups_multiple = math.lcm(8, shards)
    for size in (256, 128, 64, 32, 16, 8, 4, 2, 1):
        if num_blocks % (size * groups_multiple) == 0:
            return size
    return 0


def quantize_nf4_(model: nn.Module, shards: int) -> list[str]:
    """Replace the weight of every linear layer inside the decoder blocks by a torchao ``NF4Tensor``.

    The LM head and embeddings stay in model.dtype (as bitsandbytes leaves them); so does any linear
    layer that cannot be split into ``shards`` whole NF4 shards (rows not divisible by the world size,
    or fewer than 64 values per row group), named in the returned list and logged.

    Args:
        model: the transformers model, with real weights (on CPU or the device).
        shards: the number of FSDP shards each weight will be split into (the mesh's shard size).

    Returns:
        The names of linear layers left unquantized.
    """
    try:
        from torchao.quantization import to_nf4
    except ImportError:  # torchao before 0.16 kept NF4 under dtypes
        from torchao.dtypes.nf4tensor import to_nf4

    blocks = {id(block) for block in decoder_blocks(model)}
    skipped = []
    for block_name, block in model.named_modules():
        if id(block) not in blocks:
            continue
        for name, module in block.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            weight = module.weight.detach()
            num_blocks, rest = divmod(weight.numel(), NF4_BLOCK)
            scaler = _scaler_block_size(num_blocks, shards) if rest == 0 else 0
            if not scaler or weight.shape[0] % shards or (weight.numel() // shards) % NF4_BLOCK:
                skipped.append(f"{block_name}.{name}")
                continue
            module.weight = nn.Parameter(to_nf4(weight, NF4_BLOCK, scaler), requires_grad=False)
    if skipped:
        log.warning("kept %d linear layers unquantized (not divisible into NF4 shards): %s", len(skipped),
                    ", ".join(skipped[:4]))  # fmt: skip
    return skipped


def quantized_base_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes, parameters) of the quantized weights this process holds: codes plus their scales.

    bitsandbytes keeps 4-bit scales in a ``quant_state`` beside the packed ``Params4bit`` (absmax, and
    with double quantization the absmax's own 8-bit codes, scales and the 256-entry code book) and
    int8 scales in ``SCB``; torchao's NF4Tensor holds them as inner tensors. Under FSDP only the
    local shard counts, so the figure is each rank's share.
    """
    from torch.distributed.tensor import DTensor

    total_bytes = total_params = 0
    seen: set[int] = set()
    for module in model.modules():
        if hasattr(module, "get_base_layer"):  # a PEFT adapter layer: its base layer holds the state
            module = module.get_base_layer()
        weight = getattr(module, "weight", None)
        # PEFT's adapter layers show their base layer's weight as their own: count each tensor once.
        if weight is None or id(weight) in seen or not is_quantized_tensor(weight):
            continue
        seen.add(id(weight))
        local = weight.to_local() if isinstance(weight, DTensor) else weight
        kind = type(local).__name__
        if kind == "NF4Tensor":
            inner = (local.quantized_data, local.quantized_scalers, local.quantization_factor)
            total_bytes += sum(t.numel() * t.element_size() for t in inner)
            total_params += local.numel()
        elif kind == "Params4bit":
            state = local.quant_state
            total_bytes += local.numel() * local.element_size() + _quant_state_bytes(state)
            total_params += int(torch.Size(state.shape).numel())
        else:  # Int8Params: int8 codes + one fp32 scale per row (SCB)
            scb = getattr(local, "SCB", None)
            if scb is None:
                scb = getattr(module, "state", None) and module.state.SCB
            total_bytes += local.numel() * local.element_size()
            total_bytes += 0 if scb is None else scb.numel() * scb.element_size()
            total_params += local.numel()
    return total_bytes, total_params


def _quant_state_bytes(state) -> int:
    tensors = [state.absmax, getattr(state, "code", None)]
    nested = getattr(state, "state2", None)
    if nested is not None:
        tensors += [nested.absmax, nested.code, getattr(state, "offset", None)]
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The full-precision weight of a (possibly quantized) linear layer, as a plain tensor."""
    weight = module.weight
    kind = type(weight).__name__
    if kind == "NF4Tensor":
        return weight.get_original_weight()
    if kind in ("Params4bit", "Int8Params"):
        from peft.utils.integrations import dequantize_module_weight

        return dequantize_module_weight(module).detach()
    return weight.detach()


@contextlib.contextmanager
def without_quantization_state(model: nn.Module) -> Iterator[None]:
    """Hide bitsandbytes' quantization state from ``model.state_dict()`` for the duration.

    bitsandbytes layers add their frozen state to the state dict under names that are not module
    attributes (``SCB``, ``weight_format``, ``weight.absmax``, ...): DCP's ``get_state_dict`` resolves
    every name and failed on 8-bit layers, and on 4-bit ones it would save the frozen scales into every
    checkpoint, whose design is to hold only what trains. Checkpoint save, resume and export read the
    trainable state inside this context; the layers' own weight and bias names stay.
    """

    def drop_quantization_state(module, state_dict, prefix, local_metadata) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            if key[len(prefix) :] not in ("weight", "bias"):
                del state_dict[key]

    handles = []
    for module in model.modules():
        if type(module).__name__ in ("Linear4bit", "Linear8bitLt") and not hasattr(module, "get_base_layer"):
            register = (
                getattr(module, "register_state_dict_post_hook", None) or module._register_state_dict_hook
            )
            handles.append(register(drop_quantization_state))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
