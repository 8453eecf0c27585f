"""Every PEFT method x every strategy: trains (finite, falling loss), saves in PEFT format, reloads with
``PeftModel.from_pretrained`` to the same logits, generates. One launch per strategy runs every method
(tests/distributed/peft_worker.py); FSDP and DDP use 2 gloo processes and are compared with the
one-process run.

Tolerances: 1e-4 between strategies and between the trained and the reloaded model (fp32; sums in
another order differ by ~1e-6). Each step trains on the same 4 records, so a falling loss means the
method learns.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import dist_env, run_torchrun
from llmft.config import build_config
from llmft.errors import ConfigError

WORKER = str(Path(__file__).with_name("peft_worker.py"))
sys.path.insert(0, str(Path(__file__).parent))
from peft_worker import CASES  # noqa: E402

TOLERANCE = 1e-4
# 8-bit under FSDP is a config error (test below), and DDP replicates bitsandbytes' 4-bit base, not
# torchao's; every other case runs under every strategy.
FSDP_CASES = [name for name in CASES if name != "lora_8bit"]
DDP_CASES = [name for name in CASES if name != "qlora_torchao"]


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("peft-single")
    result = subprocess.run([sys.executable, WORKER, str(out), "single"], capture_output=True, text=True,
                            env=dist_env(), timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return _results(out)


def _launch(tmp_path_factory, nproc: int, strategy: str, cases: list[str]) -> dict:
    out = tmp_path_factory.mktemp(f"peft-{strategy}{nproc}")
    result = run_torchrun(nproc, WORKER, str(out), strategy, ",".join(cases))
    assert result.returncode == 0, result.stderr[-4000:]
    return _results(out)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> dict:
    return _launch(tmp_path_factory, 2, "ddp", DDP_CASES)


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory) -> dict:
    return _launch(tmp_path_factory, 2, "fsdp", FSDP_CASES)


@pytest.mark.parametrize("strategy", ["single", "ddp", "fsdp"])
def test_every_method_trains_saves_reloads_and_generates(strategy, request):
    results = request.getfixturevalue(strategy)
    assert sorted(results) == sorted({"single": CASES, "ddp": DDP_CASES, "fsdp": FSDP_CASES}[strategy])
    for name, case in results.items():
        losses = case["losses"]
        assert len(losses) == 4 and all(math.isfinite(x) for x in losses), (name, losses)
        assert losses[-1] < losses[0], (name, losses)
        assert case["adapter_files"] == ["adapter_config.json", "adapter_model.safetensors"], name
        assert case["max_logit_diff"] <= TOLERANCE, (name, case["max_logit_diff"])
        assert case["generated_tokens"] == 4, name


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_follow_the_one_process_run(strategy, request, single):
    results = request.getfixturevalue(strategy)
    # FSDP's 4-bit base is torchao NF4, not bitsandbytes': compared in the next test instead.
    for name in [n for n in results if not (strategy == "fsdp" and n.startswith("qlora"))]:
        for ours, reference in zip(results[name]["losses"], single[name]["losses"], strict=True):
            assert ours == pytest.approx(reference, abs=TOLERANCE), name


def test_fsdp_4bit_matches_one_process_and_halves_the_base(fsdp, single):
    """FSDP's 4-bit base (torchao NF4, sharded) against one process with the same NF4 codes."""
    one = single["qlora_torchao"]
    for two in (fsdp["qlora"], fsdp["qlora_torchao"]):  # auto picks torchao under FSDP
        for ours, reference in zip(two["losses"], one["losses"], strict=True):
            assert ours == pytest.approx(reference, abs=TOLERANCE)
    two = fsdp["qlora"]
    # Bytes of quantized codes and scales each rank holds: half of the one-process total (exactly
    # here, as every quantized layer splits evenly), at 0.52 bytes per parameter (NF4 + scales).
    (whole_bytes, whole_params), = one["base_shares"]  # fmt: skip
    assert whole_params == 2_899_968 and 0.5 < whole_bytes / whole_params < 0.53
    for rank_bytes, rank_params in two["base_shares"]:
        assert rank_params == whole_params // 2
        assert rank_bytes == pytest.approx(whole_bytes / 2, rel=0.01)


def test_bitsandbytes_bases_hold_what_the_docs_say(single):
    """docs/peft.md's bytes per parameter of the quantized base (tiny-llama's 28 block linears)."""
    nf4_bytes, params = single["qlora"]["base_shares"][0]
    int8_bytes, _ = single["lora_8bit"]["base_shares"][0]
    assert params == 2_899_968
    assert round(nf4_bytes / params, 3) == 0.526
    assert round(int8_bytes / params, 3) == 1.013  # int8 codes + an fp32 scale per row


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"model.quantization": "8bit", "distributed.strategy": "fsdp"}, "8bit cannot be sharded by FSDP"),
        ({"peft.method": "qlora", "model.quant_type": "fp4", "distributed.strategy": "fsdp"}, "it has only NF4"),
        ({"peft.method": "qlora", "peft.lora.use_dora": True, "distributed.strategy": "fsdp"}, "use_dora"),
        ({"peft.method": "prefix", "data.batching": "packing"}, "use --data.batching padding"),
        ({"peft.method": "prompt", "task": "classification", "data.format": "classification"}, "lora or ia3"),
        ({"model.quantization": "4bit", "peft.method": "none"}, "pick a PEFT method"),
        ({"peft.method": "qlora", "model.quantization": "none"}, "use --peft.method lora"),
        ({"model.double_quant": False}, "apply to model.quantization 4bit"),
        ({"peft.method": "ia3", "peft.ia3.feedforward_modules": "up_proj"}, "not in peft.ia3.target_modules"),
    ],
)  # fmt: skip
def test_invalid_combinations_fail_before_any_work(settings, message):
    with pytest.raises(ConfigError, match=message):
        build_config({}, settings)


def test_fsdp_4bit_on_one_shard_is_a_clear_error(tmp_path):
    """FSDP2's one-rank shortcut cannot gather NF4 (torch 2.13): refused, naming the equivalent setup."""
    result = run_torchrun(1, "-m", "llmft", "finetune", "--peft.method", "qlora", "--distributed.strategy",
                          "fsdp", "--output_dir", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode != 0  # torchrun reports its child's exit status 2 as 1
    assert (
        result.stderr.count("llmft: error: model.quantization 4bit with distributed.strategy fsdp over 1")
        == 1
    )
    assert "--distributed.strategy single --model.quant_backend torchao" in result.stderr
    assert not (tmp_path / "out").exists()


def test_fsdp_qlora_and_prompt_tuning_resume_with_identical_losses(tmp_path):
    """A 2-rank run of each resumed from its step-2 checkpoint repeats steps 3-4 exactly (torchao NF4
    base; prompt tuning's replicated encoder and unsharded embedding)."""
    flags = ["--distributed.strategy", "fsdp", "--train.max_steps", "4", "--train.eval_every", "0",
             "--data.max_samples", "32", "--train.batch_size", "4", "--train.micro_batch_size", "2",
             "--generation.max_new_tokens", "2", "--logging.tensorboard", "false", "--logging.plot", "false",
             "--train.progress", "false", "--train.precision", "fp32", "--checkpoint.every_steps", "2",
             "--train.lr", "1e-2"]  # fmt: skip
    for method in ("qlora", "prompt"):
        whole, resumed = tmp_path / f"{method}-whole", tmp_path / f"{method}-resumed"
        first = run_torchrun(
            2, "-m", "llmft", "finetune", "--peft.method", method, *flags, "--output_dir", str(whole)
        )
        assert first.returncode == 0, first.stderr[-3000:]
        checkpoint = whole / "checkpoints" / "step-000002"
        second = run_torchrun(2, "-m", "llmft", "finetune", "--peft.method", method, *flags,
                              "--output_dir", str(resumed), "--resume", str(checkpoint))  # fmt: skip
        assert second.returncode == 0, second.stderr[-3000:]
        losses = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
                   if "loss" in json.loads(line)] for run in (whole, resumed)]  # fmt: skip
        assert losses[1] == losses[0][2:], (method, losses)
