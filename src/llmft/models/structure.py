"""Where things are inside a model: the transformers model under its wrappers, and its decoder blocks.

Freezing, quantization, sharding and evaluation all need them; they live here, below those packages,
so that none of them has to import another to find a block.
"""

from __future__ import annotations

from torch import nn

from llmft.errors import UserError


def hf_model(model: nn.Module) -> nn.Module:
    """The transformers model inside ``model`` (a DDP wrapper, a PeftModel, or the model itself)."""
    model = unwrap(model)
    get_base = getattr(model, "get_base_model", None)  # PeftModel
    return get_base() if callable(get_base) else model


def unwrap(model: nn.Module) -> nn.Module:
    """The module under a DDP wrapper (FSDP2 wraps nothing: it changes the modules in place)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformer, found from the model itself, never by a hard-coded class.

    transformers names them in ``_no_split_modules`` (the classes that device maps never split, e.g.
    ``LlamaDecoderLayer``); failing that, the children of the longest ``nn.ModuleList`` are taken.
    """
    base = hf_model(model)
    names = set(getattr(base, "_no_split_modules", None) or ())
    blocks = [m for m in base.modules() if type(m).__name__ in names]
    if not blocks:
        lists = [m for m in base.modules() if isinstance(m, nn.ModuleList)]
        blocks = list(max(lists, key=len)) if lists else []
    if not blocks:
        raise UserError(
            f"distributed.strategy fsdp: found no decoder blocks in {type(base).__name__} (no "
            f"_no_split_modules and no module list) to shard one by one; use --distributed.strategy ddp"
        )
    return blocks
