"""llama-recipes flags -> llmft finetune flags (the fsdp_finetuning.py shim), without training anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmft.cli import build_parser
from llmft.compat.llama_recipes import translate
from llmft.config import load_config, parse_overrides
from llmft.errors import UserError


def _config(argv, world_size=1):
    flags = translate(argv, world_size)
    _, extra = build_parser().parse_known_args(["finetune", *flags])
    return load_config(None, parse_overrides(extra))


def test_the_seed_commands_flags_map_onto_the_config():
    cfg = _config(
        ["--enable_fsdp", "--model_name", "/models/llama", "--dataset", "english_quotes",
         "--batch_size_training", "2", "--gradient_accumulation_steps", "3", "--num_epochs", "2",
         "--max_train_step", "10", "--lr", "1e-4", "--use_peft", "--peft_method", "lora",
         "--output_dir", "out", "--context_length", "512", "--mixed_precision", "False",
         "--batching_strategy", "padding", "--seed", "7"],
        world_size=4,
    )  # fmt: skip
    assert cfg.distributed.strategy == "fsdp" and cfg.model.name == "/models/llama"
    assert cfg.data.format == "quotes" and cfg.data.max_seq_len == 512
    # llama-recipes' batch is per process: 2 x 3 accumulation x 4 processes.
    assert (cfg.train.micro_batch_size, cfg.train.batch_size) == (2, 24)
    assert (cfg.train.epochs, cfg.train.max_steps, cfg.train.lr, cfg.train.seed) == (2, 10, 1e-4, 7)
    assert cfg.peft.method == "lora" and cfg.output_dir == "out" and cfg.train.precision == "fp32"


def test_fsdp_options_without_fsdp_and_pure_bf16_full_finetuning_are_honoured():
    cfg = _config(["--fsdp_config.sharding_strategy", "SHARD_GRAD_OP"])  # ignored without FSDP, as there
    assert cfg.distributed.strategy == "single" and cfg.distributed.fsdp.reshard_after_forward
    full = _config(["--enable_fsdp", "--use_peft", "false", "--fsdp_config.pure_bf16"], world_size=2)
    assert (full.peft.method, full.model.dtype, full.train.precision) == ("none", "float32", "bf16")
    lora = _config(["--enable_fsdp", "--use_peft", "--fsdp_config.pure_bf16"], world_size=2)
    assert (lora.model.dtype, lora.distributed.fsdp.param_dtype) == ("bfloat16", "bfloat16")


def test_freeze_layers_map_onto_the_bottom_strategy():
    cfg = _config(["--freeze_layers", "--num_freeze_layers", "3", "--use_peft", "false"])
    assert cfg.peft.method == "none" and cfg.freeze.strategy == "bottom"
    assert cfg.freeze.num_frozen_layers == 3 and cfg.freeze.train_embeddings  # llama-recipes keeps embeddings
    assert _config(["--freeze_layers"]).freeze.num_frozen_layers == 1  # llama-recipes' default


def test_dataset_names_and_packing():
    alpaca = _config(["--dataset", "alpaca_dataset"]).data
    assert (alpaca.format, alpaca.prompt_template) == ("alpaca", "alpaca_legacy")  # llama-recipes' template
    assert _config(["--dataset", "grammar_dataset"]).data.format == "grammar"
    assert _config(["--batching_strategy", "packing"]).data.batching == "packing"
    assert translate(["--dataset=quotes"]) == ["--data.format", "quotes"]


def test_llmft_flags_pass_through_and_unset_flags_keep_llmft_defaults():
    cfg = _config(
        ["--train_strategy", "ddp", "--use_peft=false", "--train.lr", "2e-5", "--max_train_step", "0"]
    )
    assert cfg.distributed.strategy == "ddp" and cfg.peft.method == "none" and cfg.train.lr == 2e-5
    assert cfg.train.max_steps is None  # llama-recipes' 0: no limit
    assert translate([]) == []


def test_fsdp_config_flags(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    cfg = _config(
        ["--enable_fsdp", "--fsdp_config.pure_bf16", "--fsdp_config.fsdp_activation_checkpointing",
         "--fsdp_config.sharding_strategy", "SHARD_GRAD_OP", "--fsdp_config.fsdp_cpu_offload"]
    )  # fmt: skip
    assert cfg.model.dtype == "bfloat16" and cfg.distributed.fsdp.param_dtype == "bfloat16"
    assert cfg.train.gradient_checkpointing and cfg.distributed.fsdp.cpu_offload
    assert not cfg.distributed.fsdp.reshard_after_forward
    hybrid = translate(["--enable_fsdp", "--fsdp_config.sharding_strategy", "HYBRID_SHARD"], world_size=16)
    # HYBRID_SHARD shards within a node (LOCAL_WORLD_SIZE 8) and replicates across the 16 / 8 = 2 nodes.
    assert hybrid == ["--distributed.fsdp.hsdp_replicate", "2", "--distributed.strategy", "fsdp"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--quantization", "4bit"], "4bit"),
        (["--quantization=8bit"], "8bit"),
        (["--quantization"], "8bit"),  # older llama-recipes: a boolean flag meaning 8-bit
        (["--quantization", "--use_peft"], "8bit"),
        (["--quantization", "false"], "none"),
    ],
)
def test_quantization_flag_old_and_new(argv, expected):
    cfg = _config([*argv, "--use_peft"])
    assert cfg.model.quantization == expected and cfg.peft.method == "lora"


@pytest.mark.parametrize("method", ["llama_adapter", "prefix"])
def test_peft_methods_of_llama_recipes_map_by_name(method):
    argv = translate(["--use_peft", "--peft_method", method, "--enable_fsdp"], world_size=2)
    assert argv[argv.index("--peft.method") + 1] == method


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--quantization=2bit"], "--quantization: expected 4bit or 8bit, got .2bit."),
        (["--peft_method", "adalora"], "llama-recipes' methods are lora, llama_adapter, prefix"),
        (["--freeze_layers", "--use_peft"], "--freeze_layers applies to full fine-tuning"),
        (["--num_freeze_layers", "2"], "--num_freeze_layers needs --freeze_layers"),
        (["--dataset", "samsum_dataset"], "llmft does not bundle samsum"),
        (["--dataset", "custom_dataset"], "pass --data.path FILE"),
        (["--batching_strategy", "tight"], "'tight' is not one of padding, packing"),
        (["--train_strategy", "deepspeed"], "'deepspeed' is not one of single, ddp, fsdp"),
        (["--enable_fsdp", "--train_strategy", "ddp"], "contradicts --train_strategy ddp"),
        (["--use_peft", "maybe"], "unexpected argument 'maybe'"),
        (["--lr"], "--lr needs a value"),
        (["--batch_size_training", "2", "--train.batch_size", "8"], "pass one pair"),
        (["--run_validation", "false"], "unknown flag '--run_validation'"),
    ],
)
def test_flags_llmft_cannot_honour_are_clear_errors(argv, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        translate(argv, world_size=1)


def test_the_shim_without_torchrun_names_the_shim_launch(tmp_path):
    # Run as a script without torchrun's environment, the shim's user is told the shim's launch.
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    shim = Path(__file__).resolve().parents[2] / "fsdp_finetuning.py"
    result = subprocess.run(
        [sys.executable, str(shim), "--enable_fsdp", "--output_dir", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "launch with `torchrun --nproc_per_node N fsdp_finetuning.py ...`" in result.stderr
