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

    # The default fraction (0.1) of 4 records rounds to no validation record: an error, not a silent none.
    unsplit = run_cli("data", "preview", "--data.format", "alpaca", "--data.path", str(path))
    assert unsplit.returncode == 2 and unsplit.stderr.strip() == (
        "llmft: error: data.val_set_size: 0.1 of 4 records rounds to 0 validation records; hold out a count "
        "(--data.val_set_size 1) or none (--data.val_set_size 0)"
    )
    short = run_cli(
        "data", "preview", "--data.format", "alpaca", "--data.path", str(path), "--data.max_seq_len", "118",
        "--data.val_set_size", "0",
    )  # fmt: skip
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


def test_fine_tune_shim_resumes_from_an_llmft_checkpoint(tmp_path, capsys):
    from llmft.compat import alpaca_lora

    # In-process (the shim's own main, as fine_tune.py calls it) to keep the suite fast. A constant
    # schedule, so that a 2-step run continued to 4 steps trains exactly like a 4-step run.
    common = [
        "--data_path", str(bundled_sample("alpaca_sample.jsonl")), "--val_set_size", "0",
        "--micro_batch_size", "2", "--batch_size", "4", "--cutoff_len", "64", "--lora_dropout", "0.0",
        "--data.max_samples", "24", "--train.lr_scheduler", "constant", "--train.warmup_steps", "0",
        "--train.precision", "fp32", "--checkpoint.every_steps", "1", "--generation.max_new_tokens", "2",
        "--train.progress", "false", "--logging.tensorboard", "false", "--logging.plot", "false",
    ]  # fmt: skip
    first, second = tmp_path / "a", tmp_path / "b"
    assert alpaca_lora.main([*common, "--output_dir", str(first), "--train.max_steps", "2"]) == 0
    resumed = [
        *common,
        "--output_dir",
        str(first),
        "--train.max_steps",
        "4",
        "--resume_from_checkpoint",
        str(first),
    ]
    capsys.readouterr()
    assert alpaca_lora.main(resumed) == 0  # a run folder: its latest checkpoint, step 2
    assert f"resuming from {first / 'checkpoints' / 'step-000002'} at step 2 of 4" in capsys.readouterr().err
    assert alpaca_lora.main([*common, "--output_dir", str(second), "--train.max_steps", "4"]) == 0

    def losses(run: Path) -> list[float]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [row["loss"] for row in rows if "loss" in row]

    assert len(losses(second)) == 4 and losses(first) == losses(second)  # exact: fp32, same state and data

    # alpaca-lora also took a folder of adapter weights alone: llmft needs the training state.
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "adapter_model.safetensors").write_bytes((second / "adapter_model.safetensors").read_bytes())
    capsys.readouterr()
    assert alpaca_lora.main(["--resume_from_checkpoint", str(weights)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"llmft: error: --resume_from_checkpoint: '{weights}' holds adapter weights only, not a training "
        f"state llmft can resume; pass an llmft checkpoint folder (<output_dir>/checkpoints/step-N) or a "
        f"run folder"
    )
    assert alpaca_lora.main(["--resume_from_checkpoint", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"llmft: error: --resume_from_checkpoint: '{tmp_path / 'none'}' not found; pass a checkpoint folder, "
        f"a run folder or 'auto'"
    )


def test_fine_tune_shim_keeps_alpaca_lora_batch_meaning_and_names_its_flags(monkeypatch, capsys, caplog):
    from llmft.compat import alpaca_lora

    def batch(*flags: str) -> str:
        args = alpaca_lora.to_llmft_args(list(flags))
        return args[args.index("--train.batch_size") + 1]

    # alpaca-lora accumulates batch_size // micro_batch_size micro-batches (// WORLD_SIZE per process).
    assert batch("--micro_batch_size", "3", "--batch_size", "128") == "126"  # 42 x 3
    assert batch("--micro_batch_size", "4") == "128"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert batch("--micro_batch_size", "3", "--batch_size", "128") == "126"  # 21 x 3 x 2
    assert batch("--micro_batch_size", "5", "--batch_size", "64") == "60"  # 6 x 5 x 2
    monkeypatch.delenv("WORLD_SIZE")
    capsys.readouterr()
    assert alpaca_lora.main(["--micro_batch_size", "3", "--batch_size", "128", "--print-config"]) == 0
    out = capsys.readouterr()
    assert (
        "128 // 3 = 42 micro-batches are accumulated (over all processes), so each step trains on 126"
        in caplog.text
    )
    assert "batch_size: 126" in out.out

    def error(*flags: str) -> str:
        capsys.readouterr()
        assert alpaca_lora.main(list(flags)) == 2
        return capsys.readouterr().err.strip()

    # llmft's errors name the alpaca-lora flag that set the field, unless an llmft flag was typed.
    assert error("--lora_r", "0", "--print-config") == (
        "llmft: error: config error: --lora_r: Input should be greater than or equal to 1 (got 0)"
    )
    assert error("--lora_r", "0", "--peft.lora.r", "0", "--print-config").endswith(
        "peft.lora.r: Input should be greater than or equal to 1 (got 0)"
    )
    assert error("--batch_size", "2", "--micro_batch_size", "3") == (
        "llmft: error: --batch_size 2 is smaller than --micro_batch_size 3 x 1 process(es); alpaca-lora would "
        "accumulate 0 micro-batches - raise --batch_size or lower --micro_batch_size"
    )
    assert error("--micro_batch_size", "0") == (
        "llmft: error: --micro_batch_size 0: give a whole number of examples, at least 1"
    )
    # llmft's own flag for a field the shim sets replaces the shim's value (a list flag would add up).
    args = alpaca_lora.to_llmft_args(["--peft.lora.target_modules", "k_proj"])
    assert [args[i + 1] for i, a in enumerate(args) if a == "--peft.lora.target_modules"] == ["k_proj"]
    assert "target_modules:\n    - k_proj\n" in _printed_config(
        alpaca_lora, capsys, "--peft.lora.target_modules", "k_proj"
    )
    # alpaca-lora's default --val_set_size 2000 (with --data_path) on a small file.
    assert error("--data_path", str(bundled_sample("alpaca_sample.jsonl"))) == (
        "llmft: error: --val_set_size: holding out 2000 of 259 records leaves none for training; use a smaller "
        "count or fraction (--val_set_size defaults to 2000 with --data_path, as in alpaca-lora)"
    )


def _printed_config(alpaca_lora, capsys, *flags: str) -> str:
    capsys.readouterr()
    assert alpaca_lora.main([*flags, "--print-config"]) == 0
    return capsys.readouterr().out
