"""``llmft slurm`` and the sbatch script it writes (no cluster here: tests/slurm runs the jobs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import run_cli
from llmft.commands.slurm import job_from_args
from llmft.launch.slurm import SlurmJob, render, seed_argv, template_text

REPO = Path(__file__).resolve().parents[2]


def _sbatch_lines(text: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH ")]


def _settings(script: Path) -> dict[str, str]:
    """The settings block as bash reads it (LLMFT_ARGS one per line), with a clean environment."""
    code = (
        f'eval "$(sed -n "/^# >>> settings/,/^# <<< settings/p" {script})"; '
        'echo "NPROC=$NPROC_PER_NODE"; echo "REQUEUES=$MAX_REQUEUES"; echo "RESUME=$RESUME"; '
        'printf "ARG=%s\\n" "${LLMFT_ARGS[@]}"'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMFT_")}
    out = subprocess.run(["bash", "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    values: dict = {"ARG": []}
    for line in out.splitlines():
        key, value = line.split("=", 1)
        values["ARG"].append(value) if key == "ARG" else values.__setitem__(key, value)
    return values


def test_the_shipped_script_is_the_template_and_refuses_to_run_outside_slurm():
    shipped = REPO / "scripts" / "slurm" / "llmft.sbatch"
    assert shipped.read_text() == template_text()
    assert subprocess.run(["bash", "-n", str(shipped)]).returncode == 0
    lines = _sbatch_lines(template_text())
    assert {"--ntasks-per-node=1", "--requeue", "--output=%x-%j.out", "--signal=B:USR1@300"} <= set(lines)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(["bash", str(shipped)], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "submit this script with sbatch" in result.stderr


def test_render_writes_the_jobs_sbatch_lines_and_arguments(tmp_path):
    args = ["--config", "/abs/r.yaml", "--output_dir", "runs/a b", "--generation.prompt", "it's $HOME"]
    job = SlurmJob(nodes=4, procs_per_node=8, gpus=True, llmft_args=args, workdir=tmp_path, time="2:00:00",
                   signal_seconds=600, max_requeues=3, sbatch_options=["--partition=gpu"])  # fmt: skip
    script = tmp_path / "job.sbatch"
    script.write_text(render(job))
    lines = _sbatch_lines(script.read_text())
    assert lines == ["--job-name=llmft", "--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8",
                     "--time=2:00:00", f"--chdir={tmp_path}", "--output=%x-%j.out", "--open-mode=append",
                     "--signal=B:USR1@600", "--requeue", "--partition=gpu"]  # fmt: skip
    assert _settings(script) == {"NPROC": "8", "REQUEUES": "3", "RESUME": "auto", "ARG": args}
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # Everything after the settings is the template's body, unchanged.
    assert script.read_text().split("# <<< settings\n")[1] == template_text().split("# <<< settings\n")[1]


def test_cli_writes_the_script_and_accepts_the_seeds_flags(tmp_path):
    config = tmp_path / "r.yaml"
    config.write_text("distributed:\n  strategy: fsdp\n")
    ours, seeds = tmp_path / "ours.sbatch", tmp_path / "seed.sbatch"
    result = run_cli("slurm", "--nodes", "2", "--gpus-per-node", "4", "--config", str(config),
                     "--train.lr", "1e-4", "--out", str(ours), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and f"sbatch {ours}" in result.stdout
    result = run_cli("slurm", "--num_nodes", "2", "--num_gpu", "4", "--config", str(config),
                     "--train.lr", "1e-4", "--out", str(seeds), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert ours.read_text() == seeds.read_text()
    assert {"--nodes=2", "--gpus-per-node=4"} <= set(_sbatch_lines(ours.read_text()))
    assert _settings(ours)["ARG"] == ["--config", str(config), "--train.lr", "1e-4"]
    assert os.access(ours, os.X_OK)


def test_cpu_runs_ask_for_no_gpus_and_hsdp_replicates_across_nodes(tmp_path):
    out = tmp_path / "cpu.sbatch"
    result = run_cli("slurm", "--nodes", "2", "--gpus-per-node", "2", "--hsdp", "--distributed.device", "cpu",
                     "--out", str(out), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not any(line.startswith("--gpus") for line in _sbatch_lines(out.read_text()))
    settings = _settings(out)
    assert settings["NPROC"] == "2"
    assert settings["ARG"] == ["--distributed.device", "cpu", "--distributed.strategy", "fsdp",
                               "--distributed.fsdp.hsdp_replicate", "2"]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--nodes", "2"], "distributed.strategy is 'single' but the job runs 2 processes"),
        (["--nodes", "1", "--hsdp"], "--hsdp replicates across nodes"),
        (["--nodes", "0"], "--nodes 0: give at least 1"),
        (
            [
                "--nodes",
                "2",
                "--gpus-per-node",
                "2",
                "--distributed.strategy",
                "fsdp",
                "--distributed.fsdp.hsdp_replicate",
                "3",
            ],
            "hsdp_replicate 3 does not divide the 4 processes",
        ),  # fmt: skip
        (["--nodes", "2", "--config", "missing.yaml"], "--config 'missing.yaml' not found"),
        (["--nodes", "2", "--train.lr", "fast"], "train.lr"),
        (["--num_gpus", "2"], "did you mean '--num_gpu'"),
        (["--nodes", "2", "--hsdp", "--sbatch", "exclusive"], "--sbatch 'exclusive'"),
        (["--nodes", "2", "--hsdp", "--out", "no/such/dir/x.sbatch"], "folder 'no/such/dir' not found"),
        (["--nodes", "2", "--hsdp", "--time", "banana"], "--time 'banana': give a Slurm time limit"),
        (["--nodes", "2", "--hsdp", "--time", "1:2:3:4"], "--time '1:2:3:4'"),
        (
            ["--nodes", "2", "--hsdp", "--job-name", "my job"],
            "--job-name 'my job': give a name without spaces",
        ),
        (["--nodes", "2", "--hsdp", "--partition", "a b"], "--partition 'a b': give a name without spaces"),
        (["--nodes", "2", "--hsdp", "--account", ""], "--account '': give a name without spaces"),
        (
            ["--nodes", "2", "--hsdp", "--distributed.strategy", "ddp"],
            "--hsdp is FSDP sharded within each node",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, flags, message):
    result = run_cli("slurm", *flags, cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith("llmft: error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_submit_without_sbatch_is_an_error_and_the_seed_shim_submits_fsdp(tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no sbatch there
    result = subprocess.run([sys.executable, str(REPO / "fsdp.slurm"), "--num_nodes", "2", "--num_gpu", "2"],
                            capture_output=True, text=True, cwd=tmp_path, env=env)  # fmt: skip
    assert result.returncode == 2
    assert "sbatch is not on PATH" in result.stderr and list(tmp_path.iterdir()) == []
    assert seed_argv(["--num_nodes", "2"]) == ["slurm", "--submit", "--num_nodes", "2",
                                                "--distributed.strategy", "fsdp"]  # fmt: skip
    assert seed_argv(["--distributed.strategy=ddp"]) == ["slurm", "--submit", "--distributed.strategy=ddp"]


@pytest.mark.parametrize("limit", ["30", "30:00", "24:00:00", "2-12", "2-12:30", "2-12:30:00", "UNLIMITED"])
def test_every_slurm_time_format_is_written(limit):
    from llmft.cli import build_parser

    args, overrides = build_parser().parse_known_args(["slurm", "--time", limit])
    job = job_from_args(args, overrides)
    assert f"--time={limit}" in _sbatch_lines(render(job))


# Stand-ins for the Slurm commands the batch script calls, enough to run it on this machine: srun runs
# its command (one node), torchrun starts one llmft process in its own place (exec keeps the pid that
# srun recorded), scancel signals that process, scontrol records the requeue.
FAKE_SLURM = {
    "srun": 'while [[ $1 == --* ]]; do shift; done\necho $$ >"$FAKE_SLURM/step.pid"\nexec "$@"\n',
    "torchrun": 'while [[ $1 == --* ]]; do shift; done\nexec "$PYTHON" "$@"\n',
    "scancel": 'kill -s "${1#--signal=}" "$(cat "$FAKE_SLURM/step.pid")"\n',
    "scontrol": 'case "$1 $2" in\n"show hostnames") echo localhost ;;\n'
                'requeue*) echo "requeue $2" >>"$FAKE_SLURM/requeued" ;;\nesac\n',
}  # fmt: skip


def _catches_usr1(pid: int) -> bool:
    """Whether process ``pid`` has a USR1 handler (Linux: the SigCgt mask in /proc)."""
    status = Path(f"/proc/{pid}/status")
    masks = [line.split()[1] for line in status.read_text().splitlines() if line.startswith("SigCgt:")]
    return bool(masks) and bool(int(masks[0], 16) >> (signal.SIGUSR1 - 1) & 1)


def test_usr1_to_the_batch_script_reaches_llmft_and_the_job_is_requeued(tmp_path):
    """The path of Slurm's time-limit warning, with stand-ins for srun/scancel/scontrol: USR1 to the
    batch script as soon as llmft listens (still importing, or loading the model) is forwarded to the
    step; llmft exits 75 and the script requeues the job and exits 75 itself."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, body in FAKE_SLURM.items():
        (fake / name).write_text("#!/bin/bash\n" + body)
        (fake / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LLMFT_"))}
    env.update(PATH=f"{fake}:{Path(sys.executable).parent}:{env['PATH']}", PYTHON=sys.executable,
               FAKE_SLURM=str(tmp_path), SLURM_JOB_ID="4242", SLURM_NNODES="1",
               SLURM_JOB_NODELIST="localhost", LLMFT_NPROC_PER_NODE="1", OMP_NUM_THREADS="1")  # fmt: skip
    script = tmp_path / "llmft.sbatch"
    script.write_text(template_text())
    flags = ["--train.max_steps", "2000", "--train.progress", "false", "--data.max_samples", "40",
             "--logging.plot", "false", "--logging.tensorboard", "false", "--output_dir", str(tmp_path / "run")]  # fmt: skip
    # A session of its own, so that a failed check can end the script and the llmft it started.
    batch = subprocess.Popen(["bash", str(script), *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env, start_new_session=True)  # fmt: skip
    pid_file = tmp_path / "step.pid"
    try:
        deadline = time.monotonic() + 120
        while not (
            pid_file.is_file() and pid_file.read_text().strip() and _catches_usr1(int(pid_file.read_text()))
        ):
            assert batch.poll() is None, batch.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "llmft installed no USR1 handler in 120 s"
            time.sleep(0.005)
        batch.send_signal(signal.SIGUSR1)
        output = batch.communicate(timeout=300)[0]
    finally:
        if batch.poll() is None:
            os.killpg(batch.pid, signal.SIGKILL)
            batch.communicate()
    assert batch.returncode == 75, output[-3000:]
    assert "llmft: stopped by SIGUSR1" in output and "requeueing job 4242" in output
    assert (tmp_path / "requeued").read_text() == "requeue 4242\n"
