"""merge_adapter: the merged plain model gives the adapter model's logits; unmergeable methods say so.

Adapters get random weights instead of zero-initialised ones (LoRA's B starts at zero, IA3 at one),
so that the merge has something to fold in. Tolerances: 1e-4 on fp32 bases (float sums in another
order); on a quantized base the merged weights are the dequantized codes plus the delta, which is
what the adapter model multiplies by, so the difference stays at rounding level too: 1e-3 for
bitsandbytes 4-bit and torchao NF4 (the dequantized weight is rounded to the compute dtype), 0.25
for 8-bit: LLM.int8 also quantizes the activations to int8 per row, which a plain model does not
(measured: 0.133 on the tiny model).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmft.config import ModelSection, PeftSection
from llmft.errors import UserError
from llmft.models.loader import load_causal_lm, resolve_model
from llmft.models.quantize import quantize_nf4_
from llmft.peft.merge import PROBE_SHAPE, _probe, merge_adapter
from llmft.peft.methods import apply_method

CPU = torch.device("cpu")


def _adapter_model(method: str = "lora", quantization: str = "none", nf4: bool = False, **lora):
    model_cfg = ModelSection(quantization=quantization)
    base = load_causal_lm(resolve_model(model_cfg), model_cfg, CPU, quantize=not nf4)
    if nf4:
        quantize_nf4_(base, 1)
    torch.manual_seed(0)
    model = apply_method(base, PeftSection(method=method, lora=lora))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:  # adapter weights: random, so the merge has something to do
                noise = torch.randn(parameter.shape, generator=generator) * 0.05
                parameter.copy_(noise + (1.0 if "ia3" in name else 0.0))
    return model.eval()  # no dropout: the adapter model's logits are deterministic


def _check(model, tolerance: float, tmp_path) -> list[str]:
    probe = _probe(model.get_base_model(), CPU)
    with torch.no_grad():
        expected = model(input_ids=probe).logits
    merged, notes = merge_adapter(model)
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not any("lora" in n or "ia3" in n for n, _ in merged.named_parameters())
    assert getattr(merged.config, "quantization_config", None) is None
    # The merged model is a plain HF folder: saved and loaded with transformers alone, same logits.
    merged.save_pretrained(tmp_path / "merged")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        difference = float((loaded(input_ids=probe).logits - expected).abs().max())
    assert difference <= tolerance, (difference, notes)
    assert f"on a probe batch of {PROBE_SHAPE[0]} x {PROBE_SHAPE[1]} tokens" in notes[-1]
    return notes


@pytest.mark.parametrize(
    "settings",
    [{}, {"use_dora": True, "use_rslora": True, "target_modules": ["q_proj", "v_proj"]}],
    ids=["lora", "dora_rslora"],
)
def test_lora_merges_exactly(settings, tmp_path):
    notes = _check(_adapter_model(**settings), 1e-4, tmp_path)
    assert len(notes) == 2 and "dequantized" not in " ".join(notes)


def test_ia3_merges_exactly(tmp_path):
    _check(_adapter_model("ia3"), 1e-4, tmp_path)


@pytest.mark.parametrize(
    ("quantization", "nf4", "tolerance", "note"),
    [
        ("4bit", False, 1e-3, "4-bit (nf4) bitsandbytes base dequantized to float32"),
        ("8bit", False, 0.25, "8-bit bitsandbytes base dequantized to float32"),
        ("none", True, 1e-3, "4-bit (nf4) torchao base dequantized to float32"),
    ],
    ids=["bnb-4bit", "bnb-8bit", "torchao-nf4"],
)
def test_quantized_base_merges_into_dequantized_weights(quantization, nf4, tolerance, note, tmp_path):
    notes = _check(_adapter_model(quantization=quantization, nf4=nf4), tolerance, tmp_path)
    assert note in notes


@pytest.mark.parametrize("method", ["prefix", "prompt", "llama_adapter"])
def test_virtual_token_methods_cannot_merge(method):
    with pytest.raises(UserError, match=rf"peft.method {method} cannot be merged: .*export the adapter"):
        merge_adapter(_adapter_model(method))


def test_a_plain_model_has_nothing_to_merge():
    base = load_causal_lm(resolve_model(ModelSection()), ModelSection(), CPU)
    with pytest.raises(UserError, match="nothing to merge"):
        merge_adapter(base)
