"""The project's sbatch script on a real Slurm cluster (two slurmd on this machine, CPU, gloo).

A 2-node FSDP job of the tiny model must complete with the one-process losses; a job that gets USR1
mid-run must save a checkpoint, be requeued, resume and finish with the losses of an uninterrupted run.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
import torch

from llmft.config import build_config
from llmft.finetune import finetune

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "scripts" / "slurm" / "llmft.sbatch"
SETTINGS = {
    "train.max_steps": 4,
    "train.precision": "fp32",
    "train.batch_size": 8,
    "train.micro_batch_size": 2,
    "train.lr": 1e-2,
    "train.eval_every": 0,
    "train.progress": False,
    "data.max_samples": 64,
    "peft.lora.dropout": 0.0,  # dropout masks depend on the micro-batch layout; off for exact parity
    "generation.max_new_tokens": 4,
    "logging.tensorboard": False,
    "logging.plot": False,
}
TOLERANCE = (
    1e-5  # fp32 sums in another order differ by ~1e-6 (tests/distributed); a real change is far larger
)


def _flags(settings: dict) -> list[str]:
    return [item for key, value in settings.items() for item in (f"--{key}", str(value).lower())]


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _single(out: Path, settings: dict) -> list[float]:
    # One thread, as the jobs run (OMP_NUM_THREADS=1): on two busy cores two threads were 10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        finetune(build_config({}, {**settings, "output_dir": str(out)}))
    finally:
        torch.set_num_threads(threads)
    return _losses(out)


def _log(folder: Path, job_id: str) -> str:
    path = folder / f"llmft-{job_id}.out"
    return path.read_text() if path.exists() else f"(no log {path})"


@pytest.fixture(scope="module")
def single_losses(tmp_path_factory, tiny_model_dir) -> list[float]:
    """The one-process run of SETTINGS (the preset is materialised first: the jobs only read it)."""
    return _single(tmp_path_factory.mktemp("single") / "run", SETTINGS)


def test_two_node_fsdp_job_completes_with_the_single_process_losses(slurm_cluster, single_losses, tmp_path):
    expected = single_losses
    out = tmp_path / "slurm-run"
    result = slurm_cluster.run(
        "sbatch", "--parsable", "--nodes=2", str(SBATCH), "--distributed.strategy", "fsdp",
        *_flags(SETTINGS), "--output_dir", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    job = slurm_cluster.wait(job_id, timeout=150)
    log = _log(tmp_path, job_id)
    assert job["JobState"] == "COMPLETED", log[-4000:]
    assert "2 node(s) (n[1-2]) x 1 process(es)" in log and "llmft finished" in log
    assert "--resume auto" in log  # what makes a requeued job continue; a fresh folder starts fresh
    assert job["NodeList"] == "n[1-2]" and job["NumNodes"] == "2"
    assert log.count("Done: 4 steps") == 1  # rank 0 alone reports
    assert _losses(out) == pytest.approx(expected, abs=TOLERANCE, rel=0)
    assert expected[0] != expected[-1]


def test_seed_command_submits_an_hsdp_job_sharded_in_each_node_replicated_across(
    slurm_cluster, single_losses, tmp_path
):
    # python fsdp.slurm --num_nodes 2 --num_gpu 2: on CPU, 2 gloo processes per node, 4 in all.
    out = tmp_path / "hsdp-run"
    result = slurm_cluster.run(
        sys.executable, str(REPO / "fsdp.slurm"), "--num_nodes", "2", "--num_gpu", "2", "--hsdp",
        "--distributed.device", "cpu", *_flags(SETTINGS), "--output_dir", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job_id = re.search(r"submitted job (\d+)", result.stdout).group(1)
    job = slurm_cluster.wait(job_id, timeout=150)
    log = _log(tmp_path, job_id)
    assert job["JobState"] == "COMPLETED", log[-4000:]
    assert "2 node(s) (n[1-2]) x 2 process(es)" in log
    train_log = (out / "train.log").read_text()
    # Mesh (replicate 2, shard 2): torchrun numbers each node's processes consecutively, so each
    # shard group is one node's two processes and the replicas are the two nodes.
    assert (
        "over mesh (2, 2)" in train_log
        and "global batch 8 = 2 micro x 1 accumulation x 4 process(es)" in train_log
    )
    assert _losses(out) == pytest.approx(single_losses, abs=TOLERANCE, rel=0)


PREEMPT_SETTINGS = {**SETTINGS, "train.max_steps": 16, "checkpoint.every_steps": 0}  # 2 epochs of 8 steps


def _wait_for_training(cluster, folder: Path, job_id: str, out: Path) -> None:
    """Until the run has logged two steps, so that a stop now is mid-run (a stop before the first
    step exits 75 having trained nothing; see test_usr1_before_the_model_loads_...)."""
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 150
    while not (metrics.exists() and metrics.read_text().count('"loss"') >= 2):
        assert cluster.job(job_id)["JobState"] in ("PENDING", "RUNNING"), _log(folder, job_id)[-3000:]
        assert time.monotonic() < deadline, f"job {job_id}: training did not start in 150 s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stopped_jobs(slurm_cluster, tiny_model_dir, tmp_path_factory) -> dict:
    """Three 2-node jobs of the same run at once: one uninterrupted (the reference: a resumed run
    repeats its own layout's arithmetic exactly, while 2 ranks and 1 drift apart by ~1e-4 over 16
    steps); one that gets USR1 mid-run (the time-limit warning: the script saves and requeues); one
    that Slurm itself requeues mid-run (as preemption or `scontrol requeue`: SIGTERM to every process)."""
    folder = tmp_path_factory.mktemp("stopped")
    flags = ["--distributed.strategy", "fsdp", *_flags(PREEMPT_SETTINGS)]
    jobs = {}
    for name in ("uninterrupted", "requeued"):
        result = slurm_cluster.run("sbatch", "--parsable", "--nodes=2", str(SBATCH), *flags, "--output_dir",
                                   str(folder / name), cwd=folder)  # fmt: skip
        assert result.returncode == 0, result.stderr
        jobs[name] = result.stdout.strip()
    result = slurm_cluster.run("llmft", "slurm", "--nodes", "2", "--gpus-per-node", "1", "--distributed.device",
                               "cpu", *flags, "--output_dir", str(folder / "usr1"), "--submit", cwd=folder)  # fmt: skip
    assert result.returncode == 0, result.stderr
    jobs["usr1"] = re.search(r"submitted job (\d+)", result.stdout).group(1)

    _wait_for_training(slurm_cluster, folder, jobs["usr1"], folder / "usr1")
    # What Slurm does with --signal=B:USR1@S before the time limit: USR1 to the batch script.
    signal = slurm_cluster.run("scancel", "--signal=USR1", "--batch", jobs["usr1"])
    assert signal.returncode == 0, signal.stderr
    _wait_for_training(slurm_cluster, folder, jobs["requeued"], folder / "requeued")
    requeue = slurm_cluster.run("scontrol", "requeue", jobs["requeued"])
    assert requeue.returncode == 0, requeue.stderr

    # A requeued job starts again once its old credential expires (the test cluster's cred_expire,
    # 10 s; Slurm's default is 120 s) and resumes.
    states = {name: slurm_cluster.wait(job_id, timeout=240) for name, job_id in jobs.items()}
    return {"folder": folder, "jobs": jobs, "states": states,
            "expected": _losses(folder / "uninterrupted")}  # fmt: skip


def _check_resumed(stopped_jobs: dict, name: str, slurm_cluster) -> tuple[str, str, int]:
    """The job completed after one restart, resumed from the checkpoint its first run wrote mid-run,
    and gave the uninterrupted losses; returns the log before and after the restart and the step."""
    folder, job_id = stopped_jobs["folder"], stopped_jobs["jobs"][name]
    job, log, out = stopped_jobs["states"][name], _log(folder, job_id), folder / name
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", log[-4000:] + slurm_cluster.ctld_log()
    first, second = log.split(f"job {job_id} restart 1]", 1)
    assert "llmft finished" not in first
    stopped_at = re.search(r"stopped by SIG\w+ after step (\d+); checkpoint (\S+);", first)
    assert stopped_at, first[-3000:]
    step = int(stopped_at.group(1))
    assert 2 <= step < 16  # mid-run, at the step where it stopped
    assert stopped_at.group(2) == str(out / "checkpoints" / f"step-{step:06d}")
    assert f"latest checkpoint: step-{step:06d}" in second.splitlines()[0]
    assert f"resuming from {out / 'checkpoints' / f'step-{step:06d}'} at step {step} of 16" in second
    assert "llmft finished" in second and second.count("Done: 16 steps") == 1
    expected = stopped_jobs["expected"]
    assert stopped_jobs["states"]["uninterrupted"]["Restarts"] == "0" and len(expected) == 16
    assert _losses(out) == pytest.approx(expected, abs=TOLERANCE, rel=0)
    return first, second, step


def test_usr1_mid_run_saves_requeues_resumes_and_gives_the_uninterrupted_losses(stopped_jobs, slurm_cluster):
    first, _, step = _check_resumed(stopped_jobs, "usr1", slurm_cluster)
    assert "USR1: stopping at the end of the current step" in first
    assert "stopped by SIGUSR1" in first and f"latest checkpoint: step-{step:06d}" in first
    assert f"requeueing job {stopped_jobs['jobs']['usr1']}" in first


def test_a_job_slurm_requeues_mid_run_saves_on_sigterm_and_resumes_with_the_uninterrupted_losses(
    stopped_jobs, slurm_cluster
):
    first, _, _ = _check_resumed(stopped_jobs, "requeued", slurm_cluster)
    assert "TERM: cancelled or preempted" in first and "stopped by SIGTERM" in first
    assert "llmft stopped by TERM" in first and "requeueing job" not in first  # Slurm requeued it
