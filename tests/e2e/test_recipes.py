"""Every shipped recipe trains a few steps end to end on its bundled sample and writes its adapter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))


def test_every_bundled_format_has_a_recipe():
    formats = {path.read_text().split("format: ", 1)[1].split()[0] for path in RECIPES}
    assert formats >= {"quotes", "alpaca", "grammar", "chat", "classification"}


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_trains(recipe, tmp_path):
    out = tmp_path / recipe.stem
    result = run_cli(
        "finetune", "--config", str(recipe), "--output_dir", str(out),
        "--train.max_steps", "2", "--train.eval_every", "0", "--train.precision", "fp32",
        "--data.max_samples", "24", "--generation.max_new_tokens", "4", "--eval.max_new_tokens", "4",
        "--train.micro_batch_size", "2", "--train.batch_size", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) and 0 < x < 10 for x in losses)
    text = recipe.read_text()
    weights = "model.safetensors" if "method: none" in text else "adapter_model.safetensors"
    assert (out / weights).is_file()
    if "method: none" in text and "task: classification" not in text:
        # A fully or partly fine-tuned causal LM is a plain HF model folder.
        from transformers import AutoModelForCausalLM

        assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 4
