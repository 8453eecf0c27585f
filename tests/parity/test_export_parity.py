"""What llmft writes loads in plain transformers/peft and gives llmft's own logits."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmft.config import build_config, load_config
from llmft.finetune import finetune

TEXTS = ["“Well done is better than well said.” ― Benjamin Franklin", "“Know thyself.”"]


def _run(tmp_path, **overrides):
    cfg = build_config(
        {},
        {
            "train.max_steps": 3,
            "train.precision": "fp32",
            "train.lr": 1e-2,  # large enough that three steps move every adapter well away from zero
            "train.progress": False,
            "data.max_samples": 48,
            "generation.max_new_tokens": 4,
            "logging.tensorboard": False,
            "output_dir": str(tmp_path / "run"),
            **overrides,
        },
    )
    return finetune(cfg)


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_saved_adapter_gives_llmft_logits(tmp_path):
    result = _run(tmp_path)
    out = result.output_dir
    tokenizer = AutoTokenizer.from_pretrained(out)
    ours = _logits(result.model, tokenizer)

    base_path = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), out)
    torch.testing.assert_close(_logits(plain, tokenizer), ours, rtol=0, atol=1e-5)

    # The adapter matters: the base alone gives different logits, so the check above can fail.
    base_only = _logits(AutoModelForCausalLM.from_pretrained(base_path), tokenizer)
    assert (base_only - ours).abs().max() > 1e-2


def test_full_finetune_saves_a_plain_model(tmp_path):
    result = _run(tmp_path, **{"peft.method": "none", "train.lr": 1e-3})
    out = result.output_dir
    tokenizer = AutoTokenizer.from_pretrained(out)
    plain = AutoModelForCausalLM.from_pretrained(out)
    ours = _logits(result.model, tokenizer)
    torch.testing.assert_close(_logits(plain, tokenizer), ours, rtol=0, atol=1e-5)
    base_only = _logits(AutoModelForCausalLM.from_pretrained(result.base_model), tokenizer)
    assert (base_only - ours).abs().max() > 1e-2
    assert not (out / "adapter_config.json").exists()
    assert "model" in result.files and "model.safetensors" in result.files["model"]


def test_activation_checkpointing_keeps_the_losses(tmp_path, monkeypatch):
    from transformers.models.llama import modeling_llama

    # Count the MLP forwards inside each decoder block (the block itself is wrapped by the checkpointing
    # machinery): checkpointing runs each training forward once more in backward.
    calls = {"all": 0, "training": 0}
    forward = modeling_llama.LlamaMLP.forward

    def counting(self, *args, **kwargs):
        calls["all"] += 1
        calls["training"] += torch.is_grad_enabled()
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counting)
    plain = _run(tmp_path / "a", **{"train.lr": 1e-3})
    plain_calls = dict(calls)
    calls.update(all=0, training=0)
    checkpointed = _run(tmp_path / "b", **{"train.lr": 1e-3, "train.gradient_checkpointing": True})
    assert plain_calls["training"] == 3 * 2 * 4  # steps x micro-batches x blocks
    assert calls["all"] == plain_calls["all"] + plain_calls["training"]  # each one recomputed
    assert checkpointed.summary.losses == pytest.approx(plain.summary.losses, abs=1e-6)
    assert plain.summary.losses[0] != plain.summary.losses[-1]


def test_seed_decides_the_run(tmp_path):
    first = _run(tmp_path / "a", **{"train.lr": 1e-3})
    again = _run(tmp_path / "b", **{"train.lr": 1e-3})
    other = _run(tmp_path / "c", **{"train.lr": 1e-3, "train.seed": 7})
    assert again.summary.losses == first.summary.losses  # bit-identical
    assert other.summary.losses != first.summary.losses


def test_written_config_reproduces_the_run(tmp_path, monkeypatch):
    first = _run(tmp_path / "a", **{"train.lr": 1e-3})
    monkeypatch.chdir(tmp_path)  # the written config holds absolute paths: it works from anywhere
    again = finetune(
        load_config(first.output_dir / "llmft_config.yaml", {"output_dir": str(tmp_path / "b" / "run")})
    )
    assert again.summary.losses == first.summary.losses
