"""FSDP2 and DDP for real: gloo process groups of 2 and 4 CPU processes started by torchrun.

Every multi-process run is compared with the one-process run on the same global batch (fp32, LoRA
dropout off, so both follow the same arithmetic up to the order of float sums). Each launch is a
module-scoped fixture that several tests read, so the suite pays for it once.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import dist_env, free_port, run_cli, run_torchrun, torchrun_command
from llmft.config import build_config
from llmft.finetune import finetune

REPO = Path(__file__).resolve().parents[2]
# A global batch of 8 = micro-batch 2 x 2 accumulation x 2 processes (or 4 x 2 x 1 in one process... the
# split does not change the step's loss: it is normalised by the global target count).
COMMON = {
    "train.max_steps": 4,
    "train.precision": "fp32",
    "train.batch_size": 8,
    "train.micro_batch_size": 2,
    "train.eval_every": 0,
    "train.progress": False,
    "data.max_samples": 64,
    "peft.lora.dropout": 0.0,  # dropout masks depend on the micro-batch layout; off for exact parity
    "generation.max_new_tokens": 6,
    "logging.tensorboard": False,
    "logging.plot": False,
    "checkpoint.every_steps": 2,  # checkpoints at steps 2 and 4, for the resume tests
}
LORA = {"train.lr": 1e-2}  # large enough that four steps move the adapter far from zero
FULL = {"peft.method": "none", "train.lr": 1e-3}
TOLERANCE = 1e-5  # fp32 sums in another order differ by ~1e-6; a real difference is far larger
TEXTS = ["“Well done is better than well said.” ― Benjamin Franklin", "“Know thyself.”"]


def _flags(settings: dict) -> list[str]:
    return [item for key, value in settings.items() for item in (f"--{key}", str(value).lower())]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _train_rows(out: Path) -> list[dict]:
    return [r for r in _rows(out) if "loss" in r]


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in _train_rows(out)]


def _launch(tmp_path_factory, name: str, nproc: int, settings: dict, *program: str) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("dist") / name
    result = run_torchrun(nproc, *(program or ("-m", "llmft", "finetune")), *_flags(settings),
                          "--output_dir", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return out, result.stdout


def _single(tmp_path_factory, name: str, settings: dict) -> Path:
    out = tmp_path_factory.mktemp("single") / name
    finetune(build_config({}, {**settings, "output_dir": str(out)}))
    return out


@pytest.fixture(scope="module")
def single_lora(tmp_path_factory) -> Path:
    return _single(tmp_path_factory, "lora", {**COMMON, **LORA})


@pytest.fixture(scope="module")
def single_full(tmp_path_factory) -> Path:
    return _single(tmp_path_factory, "full", {**COMMON, **FULL})


@pytest.fixture(scope="module")
def fsdp_lora(tmp_path_factory):
    return _launch(tmp_path_factory, "fsdp-lora", 2, FSDP_LORA)


FSDP_LORA = {**COMMON, **LORA, "distributed.strategy": "fsdp"}
# Also the other FSDP options that keep fp32 arithmetic: parameters kept after forward, CPU offload.
FSDP_FULL = {**COMMON, **FULL, "distributed.strategy": "fsdp", "train.gradient_checkpointing": True,
             "distributed.fsdp.reshard_after_forward": False, "distributed.fsdp.cpu_offload": True}  # fmt: skip


@pytest.fixture(scope="module")
def fsdp_full_checkpointed(tmp_path_factory):
    return _launch(tmp_path_factory, "fsdp-full-ac", 2, FSDP_FULL)


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _adapter_logits(out: Path) -> torch.Tensor:
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)
    return _logits(model, AutoTokenizer.from_pretrained(out))


# --------------------------------------------------------------------------------------------------
# FSDP


def test_fsdp_lora_gives_the_single_process_run(fsdp_lora, single_lora):
    out, stdout = fsdp_lora
    assert _losses(out) == pytest.approx(_losses(single_lora), abs=TOLERANCE, rel=0)
    assert _losses(out)[0] != _losses(out)[-1]
    # Per-step counts are global: the two ranks' tokens add up to the one process's.
    for ours, theirs in zip(_train_rows(out), _train_rows(single_lora), strict=True):
        assert (ours["target_tokens"], ours["real_tokens"]) == (
            theirs["target_tokens"],
            theirs["real_tokens"],
        )
        assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-5)
    eval_ours, eval_single = (json.loads((o / "summary.json").read_text()) for o in (out, single_lora))
    assert eval_ours["eval_loss"] == pytest.approx(eval_single["eval_loss"], abs=TOLERANCE)
    # The closing sample ran on the sharded model (both ranks in every forward) and is the same text.
    assert eval_ours["sample"] == eval_single["sample"]
    # Rank 0 alone reports and logs; its log holds the peak host memory of both ranks at load.
    assert stdout.count("Done: 4 steps") == 1
    log = (out / "train.log").read_text()
    assert "sharded over 2 processes; peak host memory at load: rank 0" in log and "rank 1" in log
    assert "4 FSDPLlamaDecoderLayer units + root over mesh (2,)" in log


def test_fsdp_adapter_loads_in_plain_peft_with_the_single_process_logits(fsdp_lora, single_lora):
    out, _ = fsdp_lora
    ours = _adapter_logits(out)
    torch.testing.assert_close(ours, _adapter_logits(single_lora), rtol=0, atol=1e-4)
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    base_only = _logits(AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(out))
    assert (base_only - ours).abs().max() > 1e-2  # the adapter matters, so the check above can fail
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in single_lora.iterdir())


def test_fsdp_full_finetune_with_activation_checkpointing_gives_the_single_process_run(
    fsdp_full_checkpointed, single_full
):
    out, _ = fsdp_full_checkpointed
    # The one-process run recomputes nothing: checkpointing and sharding together change no loss.
    assert "parameters kept after forward, CPU offload" in (out / "train.log").read_text()
    # Each of tiny-llama's 4 decoder blocks recomputes in backward (counted on the sharded model).
    assert "activation checkpointing on 4 blocks" in (out / "train.log").read_text()
    assert _losses(out) == pytest.approx(_losses(single_full), abs=TOLERANCE, rel=0)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ours = _logits(AutoModelForCausalLM.from_pretrained(out), tokenizer)
    theirs = _logits(AutoModelForCausalLM.from_pretrained(single_full), tokenizer)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert not (out / "adapter_config.json").exists()


# --------------------------------------------------------------------------------------------------
# Sharded checkpoints: resume, reshard, export


@pytest.mark.parametrize(
    "fixture, settings", [("fsdp_lora", FSDP_LORA), ("fsdp_full_checkpointed", FSDP_FULL)]
)
def test_fsdp_resumed_from_its_sharded_checkpoint_gives_identical_losses(
    tmp_path_factory, request, fixture, settings
):
    out, _ = request.getfixturevalue(fixture)
    checkpoint = out / "checkpoints" / "step-000002"
    assert len(list((checkpoint / "state").glob("*.safetensors"))) == 2  # each rank wrote its shards
    resumed, _ = _launch(tmp_path_factory, f"{fixture}-resumed", 2, settings,
                         "-m", "llmft", "finetune", "--resume", str(checkpoint))  # fmt: skip
    assert _losses(resumed) == _losses(out)[2:]


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` now (Linux: the SigCgt mask of /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def test_usr1_before_the_model_loads_stops_every_rank_with_75_and_trains_nothing(tmp_path, fsdp_lora):
    """Slurm's warning can come while a big model is still loading: it must not be lost. Rank 0 starts
    with USR1 ignored (as llmft.sbatch starts torchrun) and gets USR1 as soon as llmft's handler is in,
    which is before it can join the process group (rank 1 is started only afterwards), so the signal
    certainly comes before the model loads. Both ranks exit 75 before the first step; the in-place
    resume's latest checkpoint stays as it was."""
    out = tmp_path / "run"
    shutil.copytree(fsdp_lora[0], out)
    shutil.rmtree(out / "checkpoints" / "step-000004")
    (out / "checkpoints" / "latest").write_text("step-000002\n")
    before = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in (out / "checkpoints").rglob("*"))
    command = [sys.executable, "-m", "llmft", "finetune", *_flags(FSDP_LORA), "--output_dir", str(out),
               "--resume", "auto"]  # fmt: skip
    port = str(free_port())

    def start(rank: int, **popen) -> subprocess.Popen:
        env = dist_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                       MASTER_ADDR="localhost", MASTER_PORT=port)  # fmt: skip
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **popen
        )

    processes = [start(0, preexec_fn=lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN))]
    rank0 = processes[0]
    try:
        deadline = time.monotonic() + 120
        while not _catches(rank0.pid, signal.SIGUSR1):
            assert rank0.poll() is None, rank0.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "rank 0 installed no USR1 handler before joining the group"
            time.sleep(0.005)
        rank0.send_signal(signal.SIGUSR1)
        processes.append(start(1))
        outputs = [p.communicate(timeout=600) for p in processes]
    finally:
        for process in processes:  # a failed check must not leave rank 0 waiting for rank 1
            if process.poll() is None:
                process.kill()
                process.communicate()
    rank1 = processes[1]
    assert [rank0.returncode, rank1.returncode] == [75, 75], [err[-3000:] for _, err in outputs]
    last = outputs[0][1].strip().splitlines()[-1]
    assert last.startswith("llmft: stopped by SIGUSR1 before training started (at step 2)"), last
    assert "llmft: stopped" not in outputs[1][1]  # rank 1 stopped with rank 0, and reported nothing
    assert "resuming from" in (out / "train.log").read_text()
    assert max(r["step"] for r in _rows(out)) == 2  # no step after the checkpoint's
    after = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in (out / "checkpoints").rglob("*"))
    assert after == before and (out / "checkpoints" / "latest").read_text().strip() == "step-000002"


def test_a_sharded_checkpoint_resumes_in_one_process_and_exports_for_plain_peft(tmp_path, fsdp_lora):
    out, _ = fsdp_lora
    # DCP reshards the two ranks' files into one process; the data position carries over in samples.
    single = tmp_path / "single"
    finetune(build_config({}, {**COMMON, **LORA, "output_dir": str(single)}),
             resume=str(out / "checkpoints" / "step-000002"))  # fmt: skip
    assert _losses(single) == pytest.approx(_losses(out)[2:], abs=TOLERANCE, rel=0)
    exported = tmp_path / "adapter"
    result = run_cli("export", str(out / "checkpoints" / "step-000004"), "--out", str(exported))
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.equal(_adapter_logits(exported), _adapter_logits(out))
    # Each rank's file is listed; a copy that lost rank 1's file is refused naming it, before any load.
    import shutil

    damaged = tmp_path / "damaged" / "step-000004"
    shutil.copytree(out / "checkpoints" / "step-000004", damaged)
    names = json.loads((damaged / "trainer_state.json").read_text())["state_files"]
    assert names == [f"shard-0000{r}-model-00001-of-00001.safetensors" for r in (1, 2)]
    (damaged / "state" / names[1]).unlink()
    refused = run_cli("export", str(damaged), "--out", str(tmp_path / "x"))
    assert refused.returncode == 2 and f"'{damaged / 'state' / names[1]}' is missing" in refused.stderr


@pytest.fixture(scope="module")
def frozen_layers(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("worker")
    result = run_torchrun(2, str(Path(__file__).with_name("fsdp_worker.py")), str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def test_each_fsdp_rank_holds_half_of_the_parameters_and_optimizer_state(frozen_layers):
    for report in frozen_layers:
        # tiny-llama's tensors have even first dimensions, so the shards are exact halves.
        assert report["param_bytes_local"] * 2 == report["param_bytes_full"]
        assert report["optimizer_bytes_local"] * 2 == report["optimizer_bytes_full"]
    assert frozen_layers[0]["losses"] == frozen_layers[1]["losses"]  # a global loss, the same on each
    # A global batch without targets: both ranks skip the optimizer step, at the same step, unchanged.
    skip = [report["no_targets"] for report in frozen_layers]
    assert skip[0] == skip[1]  # every rank saw the same global counts and norms
    assert skip[0]["step"] == 4 and skip[0]["loss_is_nan"] and skip[0]["grad_norm"] == 0.0
    assert skip[0]["unchanged"] and skip[0]["next_targets"] > 0 and skip[0]["next_grad_norm"] > 0


def test_memory_planner_terms_equal_each_fsdp_ranks_shards(frozen_layers):
    from llmft.memory.architectures import resolve_shape
    from llmft.memory.estimator import Setup, estimate
    from llmft.memory.params import MethodSpec

    for method, name in (("none", "full"), ("lora", "lora")):
        setup = Setup(resolve_shape("tiny-llama"), MethodSpec(name), strategy="fsdp", gpus=2, precision="fp32",
                      base_dtype="fp32", device="cpu")  # fmt: skip
        planned = estimate(setup)
        for report in frozen_layers:  # rank 0 and rank 1 hold shards of the same size here
            measured = report["terms"][method]
            assert planned.parameter_bytes == measured["parameters"]
            assert planned.gradient_bytes == measured["gradients"]
            assert planned.optimizer_bytes == measured["optimizer"]


def test_frozen_layers_under_fsdp_stay_and_the_rest_train(frozen_layers):
    report = frozen_layers[0]
    frozen = [k for k in report["unchanged"] if "layers.0." in k or "layers.1." in k]
    assert len(frozen) == 2 * 9  # every weight of the two bottom blocks
    # Block 2 mixes frozen attention and a trained MLP inside one FSDP unit.
    assert {k for k in report["unchanged"] if "layers.2." in k} == {
        f"model.layers.2.self_attn.{p}_proj.weight" for p in "qkvo"
    }
    assert set(report["changed"]) == set(report["trainable"])
    assert "model.layers.3.mlp.up_proj.weight" in report["changed"]


def test_fsdp_bfloat16_parameters_train_close_to_float32(frozen_layers):
    """distributed.fsdp.param_dtype bfloat16: weights gathered and multiplied in bf16, gradients
    reduced and master weights kept in fp32. Three LoRA steps stay within 2e-2 of the fp32 run's
    losses (about 7.9; the largest difference measured is 8.8e-3), yet differ: bf16 did compute."""
    for report in frozen_layers:
        fp32, bf16 = report["lora_losses"]["float32"], report["lora_losses"]["bfloat16"]
        assert len(fp32) == len(bf16) == 3 and all(math.isfinite(x) for x in bf16)
        assert bf16 == pytest.approx(fp32, abs=2e-2, rel=0)
        assert bf16 != fp32
    assert frozen_layers[0]["lora_losses"] == frozen_layers[1]["lora_losses"]
    assert any("(param dtype bfloat16, reduce float32" in line for line in frozen_layers[0]["logged"])


def test_ddp_all_reduces_once_per_optimizer_step_with_accumulation(frozen_layers):
    """Accumulation 2: DDP's no_sync keeps the first micro-batch's backward local; the gradient is
    all-reduced (in one or more buckets) only after the second. Syncing every micro-batch would put
    all-reduces between the two forwards of a step."""
    for report in frozen_layers:
        runs = [(name, len(list(group))) for name, group in itertools.groupby(report["ddp_events"])]
        assert [name for name, _ in runs] == ["forward", "allreduce", "step"] * 2, runs
        assert [n for name, n in runs if name == "forward"] == [2, 2], runs


# --------------------------------------------------------------------------------------------------
# DDP


@pytest.mark.parametrize(("method", "settings"), [("lora", LORA), ("full", FULL)])
def test_ddp_gives_the_single_process_run(tmp_path_factory, request, method, settings):
    single = request.getfixturevalue(f"single_{method}")
    out, stdout = _launch(
        tmp_path_factory, f"ddp-{method}", 2, {**COMMON, **settings, "distributed.strategy": "ddp"}
    )
    assert _losses(out) == pytest.approx(_losses(single), abs=TOLERANCE, rel=0)
    assert stdout.count("Done: 4 steps") == 1
    if method == "lora":
        torch.testing.assert_close(_adapter_logits(out), _adapter_logits(single), rtol=0, atol=1e-4)
        # DDP's checkpoint (replicated tensors written once) continues in one process.
        resumed = tmp_path_factory.mktemp("ddp-resumed") / "single"
        finetune(build_config({}, {**COMMON, **settings, "output_dir": str(resumed)}),
                 resume=str(out / "checkpoints" / "step-000002"))  # fmt: skip
        assert _losses(resumed) == pytest.approx(_losses(out)[2:], abs=TOLERANCE, rel=0)


def test_packed_alpaca_under_fsdp_gives_the_single_process_run(tmp_path_factory):
    # Packed rows (position ids, no 2-D mask) sharded over ranks by the resumable sampler.
    packed = {**COMMON, **LORA, "train.max_steps": 3, "data.format": "alpaca", "data.batching": "packing",
              "data.max_seq_len": 512, "data.max_samples": 64,
              "eval.max_generations": 2, "eval.max_new_tokens": 6}  # fmt: skip
    single = _single(tmp_path_factory, "packed", packed)
    out, _ = _launch(tmp_path_factory, "fsdp-packed", 2, {**packed, "distributed.strategy": "fsdp"})
    assert _losses(out) == pytest.approx(_losses(single), abs=TOLERANCE, rel=0)
    assert [r["real_tokens"] for r in _train_rows(out)] == [r["real_tokens"] for r in _train_rows(single)]
    # The eval hook generated on the sharded model (both ranks in every forward, synced_gpus): the same
    # greedy answers and task metric as the one process; rank 0 alone logged them.
    ours, theirs = ([r for r in _rows(o) if "eval_loss" in r] for o in (out, single))
    assert len(ours) == len(theirs) == 1
    assert ours[0]["eval_samples"] == theirs[0]["eval_samples"] and len(ours[0]["eval_samples"]) == 2
    assert ours[0]["eval_rougeL"] == pytest.approx(theirs[0]["eval_rougeL"], abs=1e-9)


FREEZE_CASES = {
    "bottom": {**FULL, "freeze.strategy": "bottom", "freeze.num_frozen_layers": 2},
    "mlp-classifier": {"task": "classification", "data.format": "classification", "peft.method": "none",
                       "freeze.strategy": "head_only", "head.type": "mlp", "head.dropout": 0.0, "train.lr": 1e-3},
}  # fmt: skip


@pytest.mark.parametrize("case", list(FREEZE_CASES))
def test_freeze_strategies_under_fsdp_give_the_single_process_run(tmp_path_factory, tiny_model_dir, case):
    settings = {**COMMON, **FREEZE_CASES[case]}
    single = _single(tmp_path_factory, f"freeze-{case}", settings)
    out, _ = _launch(tmp_path_factory, f"fsdp-freeze-{case}", 2, {**settings, "distributed.strategy": "fsdp"})
    assert _losses(out) == pytest.approx(_losses(single), abs=TOLERANCE, rel=0)
    from safetensors.torch import load_file

    base = load_file(tiny_model_dir / "model.safetensors")
    saved = load_file(out / "model.safetensors")
    for name, tensor in saved.items():
        if name in base:
            frozen = "embed_tokens" in name or any(f"layers.{i}." in name for i in (0, 1))
            if case == "mlp-classifier":
                frozen = True  # head_only: the whole backbone
            assert torch.equal(tensor, base[name]) == frozen, name
    if case == "mlp-classifier":
        assert any(name.startswith("score.") for name in saved)


# --------------------------------------------------------------------------------------------------
# Launches: two nodes with c10d rendezvous, four processes through the llama-recipes shim


def test_two_nodes_with_c10d_rendezvous(tmp_path, single_lora):
    out = tmp_path / "two-nodes"
    command = [*torchrun_command(1, nnodes=2, endpoint=f"localhost:{free_port()}"), "-m", "llmft", "finetune",
               *_flags({**COMMON, **LORA, "distributed.strategy": "fsdp"}), "--output_dir", str(out)]  # fmt: skip
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dist_env())
             for _ in range(2)]  # fmt: skip
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-3000:] for _, err in outputs]
    assert _losses(out) == pytest.approx(_losses(single_lora), abs=TOLERANCE, rel=0)


def test_four_processes_through_the_llama_recipes_shim_with_hsdp(tmp_path_factory, single_lora):
    # llama-recipes' batch is per process: 1 x 2 accumulation x 4 processes = the global batch of 8.
    recipes = ["--enable_fsdp", "--model_name", "tiny-llama", "--dataset", "english_quotes",
               "--batch_size_training", "1", "--gradient_accumulation_steps", "2", "--use_peft",
               "--peft_method", "lora", "--lr", "1e-2", "--max_train_step", "4", "--mixed_precision", "false"]  # fmt: skip
    settings = {
        k: v for k, v in COMMON.items() if not k.startswith(("train.batch", "train.micro", "train.max"))
    }
    out, stdout = _launch(
        tmp_path_factory, "shim-4", 4, {**settings, "distributed.fsdp.hsdp_replicate": 2},
        str(REPO / "fsdp_finetuning.py"), *recipes,
    )  # fmt: skip
    assert _losses(out) == pytest.approx(_losses(single_lora), abs=TOLERANCE, rel=0)
    log = (out / "train.log").read_text()
    assert "over mesh (2, 2)" in log and "global batch 8 = 1 micro x 2 accumulation x 4 process(es)" in log
    assert stdout.count("Done: 4 steps") == 1


# --------------------------------------------------------------------------------------------------
# Misconfiguration: one line, exit 2, before any work (and before any process waits for another)


@pytest.mark.parametrize(
    ("env", "flags", "message"),
    [
        ({}, ["--distributed.strategy", "fsdp"],
         "distributed.strategy: 'fsdp' needs a process group, and this process was not started by torchrun"),
        ({"WORLD_SIZE": "4"}, ["--distributed.strategy", "fsdp", "--distributed.fsdp.hsdp_replicate", "3"],
         "distributed.fsdp.hsdp_replicate: 3 replica groups do not divide the world size 4"),
        ({"WORLD_SIZE": "3"}, ["--distributed.strategy", "ddp"],
         "train.batch_size (8) must be a multiple of train.micro_batch_size x world size (4 x 3 = 12)"),
    ],
)  # fmt: skip
def test_misconfigured_launch_is_one_line_before_any_work(tmp_path, monkeypatch, env, flags, message):
    out = tmp_path / "never"
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = run_cli("finetune", *flags, "--output_dir", str(out))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("llmft: error: "), result.stderr
    assert message in result.stderr
    assert not out.exists()


def test_a_misconfigured_torchrun_launch_fails_in_every_process_before_joining(tmp_path):
    result = run_torchrun(3, "-m", "llmft", "finetune", "--distributed.strategy", "fsdp",
                          "--distributed.fsdp.hsdp_replicate", "2", "--output_dir", str(tmp_path / "never"),
                          timeout=300)  # fmt: skip
    assert result.returncode != 0
    assert (
        result.stderr.count("llmft: error: distributed.fsdp.hsdp_replicate: 2 replica groups do not divide")
        == 3
    )
    assert not (tmp_path / "never").exists()


def test_shim_8bit_under_fsdp_is_one_line_naming_the_fix():
    """llama-recipes' bare --quantization means 8-bit, which FSDP cannot shard: one line, before work."""
    result = subprocess.run(
        [torchrun_command(1)[0], str(REPO / "fsdp_finetuning.py"), "--quantization", "--train_strategy", "fsdp"],
        capture_output=True, text=True, env=dist_env(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(
        "llmft: error: config error: model.quantization 8bit cannot be sharded by FSDP"
    )
    assert "use --model.quantization 4bit" in result.stderr
    assert result.stderr.count("\n") == 1
