"""Fold a trained adapter into its base: a plain transformers model that loads without PEFT.

LoRA (also DoRA, rsLoRA) and IA3 change weights, so they merge; prefix tuning, prompt tuning and
LLaMA-Adapter add virtual tokens or gated prompts to attention, which no weight can express.

The merge itself is PEFT's (``merge_and_unload``, which knows DoRA's magnitude and IA3's scaling).
It runs on a fresh, unquantized copy of the base: PEFT's own merge on a bitsandbytes base would
re-quantize the merged weight (a second rounding, and a model that still needs bitsandbytes), and
torchao's NF4 layers cannot merge at all. So quantized weights are first dequantized, and the
precision this costs is reported: the merged model's logits against the adapter model's on a probe
batch.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from llmft.errors import UserError
from llmft.models.quantize import dequantized_weight, is_quantized_tensor

# PEFT types whose adapters are not weight deltas, with what they do instead.
_UNMERGEABLE = {
    "PREFIX_TUNING": ("prefix", "it adds trained key/value prefixes (virtual tokens) to every layer"),
    "PROMPT_TUNING": ("prompt", "it adds trained virtual tokens before every sequence"),
    "ADAPTION_PROMPT": ("llama_adapter", "it adds gated prompt tokens to the attention of its layers"),
    "P_TUNING": ("p_tuning", "it adds trained virtual tokens before every sequence"),
}
PROBE_SHAPE = (2, 16)  # sequences x tokens of the probe batch


def merge_adapter(model: nn.Module, dtype: torch.dtype | None = None) -> tuple[nn.Module, list[str]]:
    """The trained PeftModel's base with its active adapter folded in, and notes for the user.

    Args:
        model: a ``peft.PeftModel`` (not sharded: export from a saved run or checkpoint), on any
            device, over a full-precision or a quantized (bitsandbytes 4/8-bit, torchao NF4) base.
        dtype: dtype of the merged weights; default the dtype of the base's unquantized weights (its
            input embedding), so a quantized base is dequantized into what its other weights use.

    Returns:
        ``(merged, notes)``: a ``transformers.PreTrainedModel`` on the model's device, in eval mode,
        without any quantization config; and human-readable notes, e.g. ``"4-bit (nf4) base
        dequantized to float32"`` and ``"max |logit difference| vs the adapter model 0.0031 on a probe
        batch of 2 x 16 tokens"``.

    Raises:
        UserError: if ``model`` has no adapter, or its method cannot be merged (prefix, prompt,
            llama_adapter).
    """
    from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    if not isinstance(model, PeftModel):
        raise UserError(
            "nothing to merge: this model has no adapter (a full fine-tune is already a plain model); "
            "export it without --merge"
        )
    adapter = model.active_adapter
    config = model.peft_config[adapter]
    kind = str(getattr(config.peft_type, "value", config.peft_type))
    if kind in _UNMERGEABLE:
        method, why = _UNMERGEABLE[kind]
        raise UserError(
            f"peft.method {method} cannot be merged: {why}, which no weight can express; export the "
            f"adapter instead (PeftModel.from_pretrained loads it)"
        )

    base = model.get_base_model()
    device = base.get_input_embeddings().weight.device
    dtype = dtype or base.get_input_embeddings().weight.dtype
    quantization = _describe_quantization(base)
    probe = _probe(base, device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        reference = model(input_ids=probe).logits.float()
    model.train(was_training)

    # A fresh, unquantized model of the same class, filled with the (dequantized) base weights...
    fresh_config = copy.deepcopy(base.config)
    if hasattr(fresh_config, "quantization_config"):
        del fresh_config.quantization_config
    cls = next(c for c in type(base).__mro__ if c.__module__.startswith("transformers"))
    fresh = cls._from_config(fresh_config, dtype=dtype)
    with torch.no_grad():
        for name, tensor in fresh.state_dict().items():
            tensor.copy_(_base_tensor(base, name, adapter))
    # ... then PEFT's adapter on it, with the trained adapter weights, merged by PEFT.
    with warnings.catch_warnings():  # peft calls a method transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        fresh_peft = get_peft_model(fresh, copy.deepcopy(config))
    result = set_peft_model_state_dict(fresh_peft, get_peft_model_state_dict(model, adapter_name=adapter))
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"adapter weights did not fit the fresh model: {result.unexpected_keys[:3]}")
    merged = fresh_peft.merge_and_unload().to(device).eval()
    with torch.no_grad():
        difference = float((merged(input_ids=probe).logits.float() - reference).abs().max())

    dtype_name = str(dtype).removeprefix("torch.")
    notes = [f"merged {kind.lower()} adapter '{adapter}' into the base ({dtype_name})"]
    if quantization:
        notes.append(f"{quantization} base dequantized to {dtype_name}")
    notes.append(
        f"max |logit difference| vs the adapter model {difference:.4g} on a probe batch of "
        f"{PROBE_SHAPE[0]} x {PROBE_SHAPE[1]} tokens"
    )
    return merged, notes


def _probe(base: nn.Module, device: torch.device) -> torch.Tensor:
    """Fixed token ids (seeded, independent of the global RNG), avoiding the first few special ids."""
    generator = torch.Generator().manual_seed(0)
    vocab = base.get_input_embeddings().weight.shape[0]
    return torch.randint(min(4, vocab - 1), vocab, PROBE_SHAPE, generator=generator).to(device)


def _describe_quantization(base: nn.Module) -> str | None:
    config = getattr(base.config, "quantization_config", None)
    if config is not None and getattr(config, "load_in_4bit", False):
        return f"4-bit ({config.bnb_4bit_quant_type}) bitsandbytes"
    if config is not None and getattr(config, "load_in_8bit", False):
        return "8-bit bitsandbytes"
    if any(type(p).__name__ == "NF4Tensor" for p in base.parameters()):
        return "4-bit (nf4) torchao"
    return None


def _base_tensor(base: nn.Module, name: str, adapter: str) -> torch.Tensor:
    """The base model's own value of the plain model's ``name``: under an adapter layer (its
    ``base_layer``) or a saved-module wrapper (the trained copy), dequantized when quantized."""
    path, _, leaf = name.rpartition(".")
    module = base.get_submodule(path) if path else base
    if hasattr(module, "modules_to_save"):  # e.g. a classifier's score head, trained in full
        module = module.modules_to_save[adapter]
    if hasattr(module, "get_base_layer"):
        module = module.get_base_layer()
    tensor = getattr(module, leaf)
    if leaf == "weight" and is_quantized_tensor(tensor):
        return dequantized_weight(module)
    return tensor.detach()
