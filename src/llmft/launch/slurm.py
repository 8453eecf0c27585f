"""The sbatch script of a multi-node run (written or submitted by ``llmft slurm``,
:mod:`llmft.commands.slurm`).

The script is ``llmft.sbatch`` of this package (also ``scripts/slurm/llmft.sbatch``) with the job's own
``#SBATCH`` lines and settings in place of the generic ones; its body, which launches torchrun on
every node and turns USR1 into checkpoint + requeue, is the same for every job. Generating a file
rather than a long ``sbatch`` command line keeps the job reproducible: the file says what ran.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

TEMPLATE = "llmft.sbatch"
SETTINGS_BEGIN = "# >>> settings"
SETTINGS_END = "# <<< settings"


@dataclass
class SlurmJob:
    """What the generated script asks Slurm for and what it runs.

    Attributes:
        nodes: nodes of the allocation; one torchrun per node.
        procs_per_node: processes per node: GPUs on CUDA, processes over gloo on CPU.
        gpus: whether to request ``procs_per_node`` GPUs per node (false for ``distributed.device cpu``).
        llmft_args: the ``llmft finetune`` arguments (``--config FILE`` and overrides).
        workdir: the job's working folder (relative paths in the arguments are relative to it).
        sbatch_options: further ``#SBATCH`` options, each a flag such as ``--partition=gpu``.
    """

    nodes: int
    procs_per_node: int
    gpus: bool
    llmft_args: list[str]
    workdir: Path
    job_name: str = "llmft"
    time: str | None = None
    signal_seconds: int = 300
    max_requeues: int = 20
    sbatch_options: list[str] = field(default_factory=list)


def template_text() -> str:
    """The generic sbatch script shipped with the package."""
    return resources.files("llmft.launch").joinpath(TEMPLATE).read_text(encoding="utf-8")


def render(job: SlurmJob) -> str:
    """The sbatch script of ``job``: the template with its ``#SBATCH`` lines and settings replaced."""
    text = template_text()
    head, rest = text.split(SETTINGS_BEGIN, 1)
    body = rest.split(SETTINGS_END, 1)[1].split("\n", 1)[1]
    # Keep the template's comments; drop its generic #SBATCH lines (ours come next).
    comments = [line for line in head.splitlines() if not line.startswith("#SBATCH")]
    options = [
        f"--job-name={job.job_name}",
        f"--nodes={job.nodes}",
        "--ntasks-per-node=1",
        *([f"--gpus-per-node={job.procs_per_node}"] if job.gpus else []),
        *([f"--time={job.time}"] if job.time else []),
        f"--chdir={job.workdir}",
        "--output=%x-%j.out",
        "--open-mode=append",  # a requeued job appends to the same log
        f"--signal=B:USR1@{job.signal_seconds}",
        "--requeue",
        *job.sbatch_options,
    ]
    lines = [
        *comments,
        *(f"#SBATCH {option}" for option in options),
        f"{SETTINGS_BEGIN} (written by llmft slurm)",
        f"NPROC_PER_NODE=${{LLMFT_NPROC_PER_NODE:-{job.procs_per_node}}}",
        f"MAX_REQUEUES=${{LLMFT_MAX_REQUEUES:-{job.max_requeues}}}",
        "RESUME=${LLMFT_RESUME-auto}",
        f"LLMFT_ARGS=({shlex.join(job.llmft_args)})",
        SETTINGS_END,
    ]
    return "\n".join(lines) + "\n" + body


def seed_argv(argv: list[str]) -> list[str]:
    """``python fsdp.slurm --num_nodes N --num_gpu G ...`` as ``llmft slurm`` arguments.

    The seed's command submits an FSDP job, so the shim submits, and uses FSDP unless the arguments
    choose a strategy (or ``--hsdp``).
    """
    chosen = any(a == "--hsdp" or a.split("=", 1)[0] == "--distributed.strategy" for a in argv)
    return ["slurm", "--submit", *argv, *([] if chosen else ["--distributed.strategy", "fsdp"])]
