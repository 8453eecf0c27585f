"""Helpers shared by the tests (importable as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real `llmft` console script in a subprocess (same interpreter, same environment)."""
    command = [str(Path(sys.executable).with_name("llmft")), *args]
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


def torchrun_command(nproc: int, *, nnodes: int = 1, endpoint: str | None = None) -> list[str]:
    """torchrun (as ``python -m torch.distributed.run``) on this machine: standalone, or one of
    ``nnodes`` launchers that meet at ``endpoint`` through the c10d rendezvous."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--max_restarts",
        "0",
    ]
    if endpoint is None:
        return [*command, "--standalone", "--nnodes", "1"]
    return [
        *command,
        "--nnodes",
        str(nnodes),
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        endpoint,
        "--rdzv_id",
        "llmft-test",
    ]


def dist_env(**extra: str) -> dict[str, str]:
    """The test environment for launched processes: one thread each (2 cores, several processes)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def run_torchrun(nproc: int, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N ARGS`` (ARGS: a script or -m module, then its flags)."""
    return subprocess.run(
        [*torchrun_command(nproc), *args], capture_output=True, text=True, timeout=timeout, env=dist_env()
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]
