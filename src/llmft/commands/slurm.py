"""``llmft slurm``: write (or submit) the sbatch script of a multi-node run (:mod:`llmft.launch.slurm`)."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from llmft.errors import UserError
from llmft.launch.slurm import SlurmJob, render

DESCRIPTION = """Write an sbatch script for a run on N nodes x G GPUs (or submit it with --submit): one
task per node running torchrun, c10d rendezvous at the first node, USR1 before the time limit ->
checkpoint -> requeue -> resume. The config and the overrides are checked now, before anything waits
in a queue. How to pick N and G, NCCL settings, preemption: docs/slurm.md.

examples:
  llmft slurm --nodes 2 --gpus-per-node 8 --config recipe.yaml --time 24:00:00 --submit
  llmft slurm --nodes 4 --gpus-per-node 8 --hsdp --config recipe.yaml --partition gpu
  llmft slurm --num_nodes 2 --num_gpu 4 --config recipe.yaml --train.lr 1e-4   # the seed's flags"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("slurm", help="Write or submit an sbatch script for a multi-node run.",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                       allow_abbrev=False)  # fmt: skip
    p.add_argument("--nodes", "--num_nodes", type=int, default=1, metavar="N", help="nodes (default 1)")
    p.add_argument(
        "--gpus-per-node",
        "--num_gpu",
        type=int,
        default=1,
        metavar="G",
        help="GPUs per node, one process each; with distributed.device cpu: processes per node",
    )
    p.add_argument("--config", metavar="FILE", help="YAML config; dotted flags after it override its fields")
    p.add_argument(
        "--hsdp", action="store_true", help="FSDP sharded within each node, replicated across nodes"
    )
    p.add_argument(
        "--out", metavar="FILE", help="where to write the script (default JOB_NAME.sbatch; - prints it)"
    )
    p.add_argument("--submit", action="store_true", help="submit the script with sbatch")
    p.add_argument(
        "--job-name", default="llmft", metavar="NAME", help="default llmft; the log is NAME-JOBID.out"
    )
    p.add_argument("--time", metavar="D-HH:MM:SS", help="time limit (default: the partition's)")
    p.add_argument("--partition", metavar="NAME")
    p.add_argument("--account", metavar="NAME")
    p.add_argument(
        "--cpus-per-task", type=int, metavar="C", help="CPUs for each node's task (all its processes)"
    )
    p.add_argument(
        "--signal-seconds",
        type=int,
        default=300,
        metavar="S",
        help="USR1 this long before the time limit: time to finish a step and save (default 300)",
    )
    p.add_argument(
        "--max-requeues", type=int, default=20, metavar="K", help="give up after K restarts (default 20)"
    )
    p.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION",
        help="any other #SBATCH option, e.g. --sbatch=--exclusive --sbatch=--mem=0 (repeatable)",
    )  # fmt: skip
    return p


def _positive(value: int, flag: str, least: int = 1) -> int:
    if value < least:
        raise UserError(f"{flag} {value}: give at least {least}")
    return value


# Slurm's time limit formats (sbatch --time): minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_TIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|unlimited|infinite", re.IGNORECASE)


def _check_words(args: argparse.Namespace) -> None:
    """Values written into ``#SBATCH --flag=value`` lines: sbatch ends a value at whitespace, so a
    name with a space would be cut (``--job-name=my job`` names the job ``my``), and a bad time limit
    is only refused when the job is submitted."""
    if args.time is not None and not _TIME.fullmatch(args.time):
        raise UserError(
            f"--time '{args.time}': give a Slurm time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or "
            f"D-HH:MM:SS (e.g. 24:00:00 or 2-00:00:00)"
        )
    for flag, value in (("--job-name", args.job_name), ("--partition", args.partition),
                        ("--account", args.account)):  # fmt: skip
        if value is not None and (not value or any(c.isspace() for c in value)):
            example = re.sub(r"\s+", "-", value.strip()) or "llmft"
            raise UserError(f"{flag} '{value}': give a name without spaces (e.g. {example})")


def job_from_args(args: argparse.Namespace, overrides: list[str]) -> SlurmJob:
    """The :class:`SlurmJob` of the command's flags; the run's config is loaded and checked here."""
    from llmft.config import load_config, parse_overrides

    nodes = _positive(args.nodes, "--nodes")
    procs = _positive(args.gpus_per_node, "--gpus-per-node")
    _positive(args.signal_seconds, "--signal-seconds", 0)
    _positive(args.max_requeues, "--max-requeues", 0)
    config_path = None
    if args.config:
        config_path = Path(args.config).expanduser().resolve()
        if not config_path.is_file():
            raise UserError(f"--config '{args.config}' not found")
    _check_words(args)
    if args.hsdp:
        if nodes < 2:
            raise UserError("--hsdp replicates across nodes; give --nodes 2 or more, or drop --hsdp")
        # --hsdp sets the strategy to fsdp: a different one asked for is a conflict, not overridden.
        asked = parse_overrides(overrides).get("distributed.strategy")
        if asked is None and config_path is not None:  # a file's 'single' may be the default: not a choice
            asked = load_config(config_path, {}).distributed.strategy.replace("single", "fsdp")
        if asked not in (None, "fsdp"):
            raise UserError(
                f"--hsdp is FSDP sharded within each node and replicated across nodes, but "
                f"distributed.strategy is '{asked}'; drop --hsdp, or use --distributed.strategy fsdp"
            )
        overrides = [
            *overrides,
            "--distributed.strategy",
            "fsdp",
            "--distributed.fsdp.hsdp_replicate",
            str(nodes),
        ]
    config = load_config(config_path, parse_overrides(overrides))
    llmft_args = [*(["--config", str(config_path)] if config_path else []), *overrides]
    world = nodes * procs
    strategy = config.distributed.strategy
    if world > 1 and strategy == "single":
        raise UserError(
            f"distributed.strategy is 'single' but the job runs {world} processes ({nodes} node(s) x {procs}); "
            f"add --distributed.strategy fsdp (or ddp), or --hsdp"
        )
    replicate = config.distributed.fsdp.hsdp_replicate
    if strategy == "fsdp" and world % replicate:
        raise UserError(
            f"distributed.fsdp.hsdp_replicate {replicate} does not divide the {world} processes; "
            f"use {nodes} (one replica per node) or --hsdp"
        )
    for option in args.sbatch:
        if not option.startswith("-"):
            raise UserError(f"--sbatch '{option}': give an sbatch flag such as --sbatch=--exclusive")
    extra = [f"--{name}={value}" for name, value in (("partition", args.partition), ("account", args.account),
             ("cpus-per-task", args.cpus_per_task)) if value is not None]  # fmt: skip
    return SlurmJob(
        nodes=nodes,
        procs_per_node=procs,
        gpus=config.distributed.device != "cpu",
        llmft_args=llmft_args,
        workdir=Path.cwd(),
        job_name=args.job_name,
        time=args.time,
        signal_seconds=args.signal_seconds,
        max_requeues=args.max_requeues,
        sbatch_options=[*extra, *args.sbatch],
    )


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    """Write the script (and submit it with ``--submit``); print where it is and how to follow it."""
    job = job_from_args(args, overrides)
    text = render(job)
    if args.out == "-":
        if args.submit:
            raise UserError("--out - prints the script; --submit needs a file (drop --out or name one)")
        print(text, end="")
        return 0
    sbatch = shutil.which("sbatch")
    if args.submit and sbatch is None:
        raise UserError("--submit: sbatch is not on PATH; run this on a Slurm login node, or drop --submit")
    path = Path(args.out or f"{job.job_name}.sbatch")
    if not path.parent.is_dir():
        raise UserError(f"--out {path}: folder '{path.parent}' not found; create it or pick another path")
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)
    print(
        f"wrote {path} ({job.nodes} node(s) x {job.procs_per_node} {'GPU(s)' if job.gpus else 'process(es)'} each)"
    )
    if not args.submit:
        print(f"submit it with: sbatch {shlex.quote(str(path))}")
        return 0
    result = subprocess.run(
        [sbatch, "--parsable", str(path)], capture_output=True, text=True, env=os.environ.copy()
    )
    if result.returncode != 0:
        lines = (result.stderr.strip() or result.stdout.strip() or "no message").splitlines()
        raise UserError(f"sbatch {path} failed (status {result.returncode}): {lines[-1]}")
    job_id = result.stdout.strip().split(";")[0]
    print(f"submitted job {job_id}; log: {job.workdir / f'{job.job_name}-{job_id}.out'}")
    return 0
