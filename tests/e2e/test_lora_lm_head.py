"""LoRA on the LM head (``--peft.lora.target_modules q_proj,lm_head``): the run trains, and the memory
planner counts the head's adapter by its shape (hidden x vocab) exactly as PEFT creates it."""

from __future__ import annotations

import json
import re

from helpers import run_cli


def test_lora_on_lm_head_trains_and_the_planner_counts_its_adapter(tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "finetune", "--peft.lora.target_modules", "q_proj,lm_head", "--output_dir", str(out),
        "--train.max_steps", "2", "--train.eval_every", "0", "--train.precision", "fp32",
        "--data.max_samples", "16", "--train.micro_batch_size", "2", "--train.batch_size", "2",
        "--logging.tensorboard", "false", "--logging.plot", "false", "--generation.max_new_tokens", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "train.log").read_text()
    trainable = int(re.search(r"lora: trainable parameters: ([\d,]+) of", log)[1].replace(",", ""))
    # tiny-llama: r 16 on q_proj (256 -> 256) in 4 blocks, and on lm_head (256 -> 1948 tokens).
    assert trainable == 4 * 16 * (256 + 256) + 16 * (256 + 1948) == 68_032
    planned = json.loads((out / "summary.json").read_text())["memory"]["estimate"]["parameters"]
    assert planned["trainable"] == trainable
    # The head's LoRA weights are adapters; the head's own weight stays frozen.
    groups = {
        line.split()[0]: line.split()[1:4]
        for line in log.splitlines()
        if "trainable" in line and " of " in line
    }
    assert groups["adapters"] == ["68,032", "of", "68,032"] and groups["head"] == ["0", "of", "498,688"]
