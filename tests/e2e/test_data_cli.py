"""`llmft data preview`, the seed's shims (fine_tune.py, LLaMA-finetuning-english-qoute.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

from helpers import run_cli
from llmft.cli import main
from llmft.data.instruct import ALPACA_TEMPLATES
from llmft.data.sources import bundled_sample

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ.copy(),
    )


def test_preview_marks_trained_tokens_and_counts(tmp_path, capsys, tiny_model_dir):
    # In-process (the same `main` as the console script) to keep the suite fast.
    def run_cli(*args: str) -> subprocess.CompletedProcess:
        code = main(list(args))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    record = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
    long = {"instruction": "Repeat.", "input": "", "output": "word " * 200}
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [record, long, record, record]))
    result = run_cli(
        "data", "preview", "--color", "never", "--num-examples", "1",
        "--data.format", "alpaca", "--data.path", str(path), "--data.max_seq_len", "160",
        "--data.val_set_size", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    prompt = ALPACA_TEMPLATES["alpaca"]["prompt_input"].format(
        instruction="Add the numbers.", input="2 and 3"
    )
    assert f"<s>{prompt}⟦5</s>⟧" in result.stdout  # prompt masked; output and EOS trained
    assert "records         4 (4 train, 0 validation)" in result.stdout
    assert "truncated       1 of 4 (25.0%) at data.max_seq_len 160" in result.stdout
    assert "dropped         0 of 4 (0.0%) kept no trained token at data.max_seq_len 160" in result.stdout
    assert "padding" in result.stdout and "packed rows" not in result.stdout
    assert "keep no trained token" not in result.stderr
    # The token counts, from the tokenizer: each short record is its prompt, "5" and EOS (the last two
    # trained); the long one is cut at 160 tokens, all but its prompt trained.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    short_prompt = len(tokenizer(prompt).input_ids)
    short = len(tokenizer(prompt + "5").input_ids) + 1
    long_prompt = len(
        tokenizer(ALPACA_TEMPLATES["alpaca"]["prompt_no_input"].format(instruction="Repeat.")).input_ids
    )
    tokens, trained = 3 * short + 160, 3 * (short - short_prompt) + 160 - long_prompt
    assert f"tokens          {tokens:,} (train examples: mean {tokens / 4:.1f}, max 160)" in result.stdout
    assert f"trained tokens  {trained:,} ({trained / tokens:.1%} of tokens)" in result.stdout

    short = run_cli(
        "data", "preview", "--data.format", "alpaca", "--data.path", str(path), "--data.max_seq_len", "118"
    )
    assert short.returncode == 0 and "3 of 4 examples keep no trained token after truncation" in short.stderr
    assert "dropped         3 of 4 (75.0%) kept no trained token at data.max_seq_len 118" in short.stdout
    too_short = run_cli("data", "preview", "--data.format", "alpaca", "--data.max_seq_len", "16")
    assert too_short.returncode == 2
    assert "data.max_seq_len: at 16 tokens no example keeps a trained token" in too_short.stderr

    packed = run_cli(
        "data", "preview", "--num-examples", "0", "--data.batching", "packing", "--data.format", "chat"
    )
    assert packed.returncode == 0, packed.stderr
    assert "packed rows" in packed.stdout and "--- example" not in packed.stdout

    bad = run_cli("data", "preview", "--data.format", "alpaca", "--data.path", str(tmp_path / "nope.jsonl"))
    assert bad.returncode == 2 and "data.path: file" in bad.stderr and "not found" in bad.stderr


def test_fine_tune_shim_takes_alpaca_lora_flags(tmp_path, tiny_model_dir):
    out = tmp_path / "lora-alpaca"
    result = _script(
        "fine_tune.py",
        "--base_model", str(tiny_model_dir),
        "--data_path", str(bundled_sample("alpaca_sample.jsonl")),
        "--output_dir", str(out),
        "--batch_size", "16", "--micro_batch_size", "4", "--num_epochs", "1", "--learning_rate", "1e-4",
        "--cutoff_len", "128", "--val_set_size", "16",
        "--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0.05", "--lora_target_modules", "[q_proj,v_proj]",
        "--train_on_inputs", "--group_by_length",
        "--generation.max_new_tokens", "4", "--eval.max_new_tokens", "4", "--data.max_samples", "64",  # an llmft flag: a short epoch
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "adapter_config.json").read_text())
    assert (
        config["r"] == 8
        and config["lora_alpha"] == 16
        and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    )
    import yaml

    resolved = yaml.safe_load((out / "llmft_config.yaml").read_text())
    assert resolved["data"] | {"path": None} == resolved["data"] | {
        "format": "alpaca", "max_seq_len": 128, "val_set_size": 16, "train_on_inputs": True,
        "group_by_length": True, "prompt_template": "alpaca", "path": None,
    }  # fmt: skip
    assert resolved["train"]["lr"] == 1e-4 and resolved["train"]["lr_scheduler"] == "linear"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == (64 - 16) // 16  # one epoch of the global batch, to the end

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 50, 60]])).logits).all()

    again = _script("fine_tune.py", "--output_dir", str(out), "--lora_rank", "8")
    assert again.returncode == 2 and "unknown flag '--lora_rank' - did you mean '--lora_r'?" in again.stderr


def test_quotes_script_equals_the_recipe(tmp_path):
    short = [
        "--train.max_steps",
        "3",
        "--train.precision",
        "fp32",
        "--data.max_samples",
        "40",
        "--generation.max_new_tokens",
        "4",
    ]
    script = _script("LLaMA-finetuning-english-qoute.py", *short, "--output_dir", str(tmp_path / "script"))
    assert script.returncode == 0, script.stderr[-3000:]
    recipe = run_cli(
        "finetune",
        "--config",
        str(ROOT / "configs/quotes_lora.yaml"),
        *short,
        "--output_dir",
        str(tmp_path / "recipe"),
    )
    assert recipe.returncode == 0, recipe.stderr[-3000:]

    def losses(name: str) -> list[float | None]:
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line).get("loss") for line in lines]

    assert losses("script") == losses("recipe") and len([x for x in losses("script") if x]) == 3
