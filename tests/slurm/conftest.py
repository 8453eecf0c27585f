"""A real Slurm cluster on this machine for the module's tests: munged, slurmctld, slurmd n1 and n2.

``scripts/slurm/test-cluster.sh`` installs Debian's slurm-wlm and munge (CI does it before the suite;
here too when running as root without them) and starts the daemons with all their state in a temporary
folder. The fixture stops every daemon it started, also when a test fails, and then checks that no
process of the cluster (daemon, slurmstepd or job) is left.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO / "scripts" / "slurm" / "test-cluster.sh"
SLURM_TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}


def _missing_tools() -> list[str]:
    return [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]


def _unavailable_reason() -> str | None:
    """Why no cluster can run here (None: it can). Installs the packages where that is possible."""
    if sys.platform != "linux":
        return "the local Slurm cluster needs Linux"
    if os.geteuid() != 0:
        # slurmd starts every job's processes as the submitting user, which takes root.
        return "the local Slurm cluster needs root (slurmd runs as root); CI runs the suite as root"
    if _missing_tools():
        if shutil.which("apt-get") is None:
            return f"Slurm is not installed ({', '.join(_missing_tools())} missing) and apt-get is absent"
        result = subprocess.run(["bash", str(CLUSTER_SCRIPT), "install"], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.fail(f"installing slurm-wlm and munge failed: {result.stderr[-2000:]}")
    return None


def cluster_processes(folder: Path) -> list[int]:
    """Processes started for the cluster in ``folder``: they carry its SLURM_CONF from their start."""
    marker = f"SLURM_CONF={folder / 'slurm.conf'}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:  # gone meanwhile, or not ours to read
                continue
    return found


@dataclass
class Cluster:
    folder: Path
    final_states: ClassVar[set[str]] = FINAL_STATES

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a job is submitted with (sbatch exports it to the job): this interpreter's
        bin folder first on PATH (llmft, torchrun), the tests' PYTHONPATH and LLMFT_HOME, one thread."""
        bin_dir = str(Path(sys.executable).parent)
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": f"{bin_dir}:{os.environ['PATH']}",
                "OMP_NUM_THREADS": "1", **extra}  # fmt: skip

    def run(
        self, *command: str, env: dict | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            command, capture_output=True, text=True, env=env or self.env(), cwd=cwd, timeout=60
        )

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...)."""
        result = self.run("scontrol", "show", "job", "-o", job_id)
        assert result.returncode == 0, result.stderr
        return dict(re.findall(r"(\w+)=(\S*)", result.stdout))

    def ctld_log(self) -> str:
        return (self.folder / "log" / "slurmctld.log").read_text()[-3000:]

    def wait(self, job_id: str, timeout: float, until=lambda job: job["JobState"] in FINAL_STATES) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if until(job):
                return job
            if time.monotonic() > deadline:
                self.run("scancel", job_id)
                pytest.fail(f"job {job_id} still {job['JobState']} after {timeout} s")
            time.sleep(0.5)


@pytest.fixture(scope="package")
def slurm_cluster(tmp_path_factory) -> Cluster:
    reason = _unavailable_reason()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm")
    try:
        result = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start", str(folder)], capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        if result.returncode != 0:
            logs = "\n".join(p.read_text()[-1500:] for p in sorted((folder / "log").glob("*.log")))
            pytest.fail(f"the local Slurm cluster did not start: {result.stderr}\n{logs}")
        yield Cluster(folder)
    finally:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(folder)], timeout=120)
        left = cluster_processes(folder)
        assert not left, f"processes of the test cluster outlived it: {left}"
