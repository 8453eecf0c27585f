"""Measure the bytes per parameter of a frozen base's block weights for each model.quantization.

Loads through llmft's own loader (the same calls a run makes) and counts the bytes of the real
tensors: codes plus every scale and code book (llmft.models.quantize.quantized_base_bytes). Two
shapes: the tiny-llama preset, and one LLaMA-7B-sized decoder block (hidden 4096, MLP 11008) written
to a temporary folder, where per-tensor constants (code books) no longer matter.

    PYTHONPATH=src python scripts/quant_bytes.py          # prints the Markdown table of docs/peft.md
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from llmft.config import ModelSection
from llmft.models.loader import load_causal_lm, resolve_model
from llmft.models.quantize import quantized_base_bytes
from llmft.models.structure import decoder_blocks

SETUPS = {
    "fp32": {"dtype": "float32"},
    "bf16": {"dtype": "bfloat16"},
    "8bit (bitsandbytes LLM.int8)": {"quantization": "8bit"},
    "4bit nf4, double quant (bitsandbytes; QLoRA)": {"quantization": "4bit"},
    "4bit nf4, no double quant (bitsandbytes)": {"quantization": "4bit", "double_quant": False},
    "4bit nf4 (torchao; FSDP's format)": {"quantization": "4bit", "quant_backend": "torchao"},
}


def block_bytes_per_parameter(name: str, settings: dict) -> float:
    cfg = ModelSection(name=name, **settings)
    model = load_causal_lm(resolve_model(cfg), cfg, torch.device("cpu"))
    if cfg.quantization != "none":
        nbytes, params = quantized_base_bytes(model)
    else:
        linears = [m for b in decoder_blocks(model) for m in b.modules() if isinstance(m, nn.Linear)]
        nbytes = sum(m.weight.numel() * m.weight.element_size() for m in linears)
        params = sum(m.weight.numel() for m in linears)
    return nbytes / params


def seven_b_block(folder: Path) -> str:
    """One LLaMA-7B-sized decoder block (small vocabulary: embeddings are never quantized)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=1,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=512)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    return str(folder)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shapes = {"tiny-llama (4 blocks)": "tiny-llama", "LLaMA-7B block": seven_b_block(Path(tmp))}
        print("| base weights | " + " | ".join(shapes) + " |")
        print("|---|" + "---:|" * len(shapes))
        for label, settings in SETUPS.items():
            values = [block_bytes_per_parameter(name, settings) for name in shapes.values()]
            print(f"| {label} | " + " | ".join(f"{v:.4f}" for v in values) + " |")


if __name__ == "__main__":
    main()
