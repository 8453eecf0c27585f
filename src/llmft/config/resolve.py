"""The resolve step: defaults that depend on other fields, filled in once, after the fields are checked.

A field the user set (``model_fields_set``, which a written run config sets for every field) is kept as
given, even where it conflicts: the rules (:mod:`llmft.config.rules`) then name the conflict. The
resolved values are what the run writes to ``llmft_config.yaml``, so export and reload rebuild the
same model.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from llmft.config.schema import Config

SectionT = TypeVar("SectionT", bound=BaseModel)


def _model_defaults(config: Config) -> dict[str, Any]:
    """The ``model`` fields whose default depends on the PEFT method or the strategy."""
    model, filled = config.model, {}
    if config.peft.method == "qlora" and "quantization" not in model.model_fields_set:
        filled["quantization"] = "4bit"  # qlora is LoRA on a quantized base: 4bit unless the config says
    if filled.get("quantization", model.quantization) == "4bit" and model.quant_backend == "auto":
        # The 4-bit format follows the strategy: FSDP shards torchao's NF4, single and DDP use
        # bitsandbytes. Written out, so export and reload rebuild the base the adapter was trained on
        # (torchao's NF4 codes differ from bitsandbytes').
        filled["quant_backend"] = "torchao" if config.distributed.strategy == "fsdp" else "bitsandbytes"
    return filled


def _with(section: SectionT, **values: Any) -> SectionT:
    """A copy of ``section`` with ``values``; unlike ``model_copy(update=...)`` they do not join the
    fields the user set, so ``model_fields_set`` keeps meaning "given in the config"."""
    return type(section).model_construct(
        _fields_set=set(section.model_fields_set), **{**dict(section), **values}
    )


def resolve_defaults(config: Config) -> Config:
    """``config`` with its dependent defaults filled in (a new object; ``config`` is left as it is).

    Resolving a resolved config changes nothing.
    """
    filled = _model_defaults(config)
    return _with(config, model=_with(config.model, **filled)) if filled else config
