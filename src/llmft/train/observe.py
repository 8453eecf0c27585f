"""Honest per-step numbers: model FLOPs, MFU against the device's peak, and peak memory.

The FLOPs per token come in as a :class:`FlopsModel`; :func:`llmft.memory.flops.flops_model` counts
them from the model's shape and what trains (the planner's inventory), so this module needs nothing of
the planner.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from dataclasses import dataclass

import torch

from llmft.precision import LABEL_DTYPES

log = logging.getLogger(__name__)

# Dense peak TFLOP/s per GPU (no sparsity), from the vendors' datasheets: (name fragment, bf16/fp16,
# fp32 without TF32). Longer fragments first, so "H100 PCIe" wins over "H100".
PEAK_TFLOPS: list[tuple[str, float, float]] = [
    ("H100 PCIe", 756.0, 51.0),
    ("H100", 989.0, 67.0),
    ("H200", 989.0, 67.0),
    ("H20", 148.0, 44.0),
    ("B200", 2250.0, 80.0),
    ("A100", 312.0, 19.5),
    ("A800", 312.0, 19.5),
    ("L40S", 362.0, 91.6),
    ("L40", 181.0, 90.5),
    ("L4", 121.0, 30.3),
    ("A10G", 70.0, 31.2),
    ("A10", 125.0, 31.2),
    ("RTX 4090", 165.2, 82.6),
    ("RTX 3090", 71.0, 35.6),
    ("V100", 125.0, 15.7),
    ("T4", 65.0, 8.1),
]


@dataclass(frozen=True)
class FlopsModel:
    """Training FLOPs per real token: ``dense + attention_per_position * T`` (T: row length)."""

    dense: float
    attention_per_position: float

    def per_token(self, row_length: float) -> float:
        return self.dense + self.attention_per_position * row_length


def gpu_peak_flops(name: str, precision: str) -> float | None:
    """Datasheet dense peak FLOP/s of the GPU called ``name`` at ``precision``; None when unknown."""
    for fragment, half, single in PEAK_TFLOPS:
        if fragment.lower() in name.lower():
            return (single if precision == "fp32" else half) * 1e12
    return None


def measure_cpu_peak(dtype: torch.dtype = torch.float32, size: int = 1024, repeats: int = 8) -> float:
    """This CPU's matmul throughput (FLOP/s) in ``dtype``: the best of ``repeats`` products."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm up the kernel and the thread pool
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def peak_flops(device: torch.device, precision: str, override_tflops: float | None, measure_cpu: bool):
    """(peak FLOP/s per device or None, where it came from)."""
    if override_tflops:
        return override_tflops * 1e12, "logging.peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name, precision)
        return peak, f"{name} datasheet" if peak else f"{name} (unknown: set logging.peak_tflops)"
    if measure_cpu:
        return measure_cpu_peak(LABEL_DTYPES.get(precision, torch.float32)), "measured CPU matmul"
    return None, "CPU (set logging.measure_cpu_peak for a measured peak)"


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory so far, in MiB: CUDA allocated and reserved (on CUDA), and host RSS.

    Host RSS (``ru_maxrss``) is the whole process: the Python interpreter, torch's and the other
    libraries' code and data, not only the model and its activations.
    """
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peaks = {"peak_rss_mib": rss / (2**20 if sys.platform == "darwin" else 2**10)}
    if device.type == "cuda":
        peaks["peak_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        peaks["peak_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    return peaks


class Observer:
    """Adds FLOPs, MFU and peak memory to each metrics row; keeps what the run summary needs."""

    def __init__(self, flops: FlopsModel, peak: float | None, peak_source: str, world_size: int,
                 device: torch.device) -> None:  # fmt: skip
        self.flops, self.peak, self.peak_source = flops, peak, peak_source
        self.world_size, self.device = world_size, device
        self.mfus: list[float] = []
        self.achieved: list[float] = []

    def step_row(self, real_tokens: int, rows: int, step_time_s: float) -> dict[str, float | None]:
        row_length = real_tokens / max(rows, 1)
        step_flops = real_tokens * self.flops.per_token(row_length)
        per_device = step_flops / max(step_time_s, 1e-9) / self.world_size
        mfu = per_device / self.peak if self.peak else None
        self.achieved.append(per_device)
        if mfu is not None:
            self.mfus.append(mfu)
        return {
            "flops_per_token": step_flops / max(real_tokens, 1),
            "tflops_per_device": per_device / 1e12,
            "mfu": mfu,
            **peak_memory(self.device),
        }

    def summary(self) -> dict[str, object]:
        mean = sum(self.mfus) / len(self.mfus) if self.mfus else None
        return {
            "flops_per_token_dense": self.flops.dense,
            "attention_flops_per_token_per_position": self.flops.attention_per_position,
            "mean_tflops_per_device": sum(self.achieved) / len(self.achieved) / 1e12
            if self.achieved
            else None,
            "peak_tflops_per_device": self.peak / 1e12 if self.peak else None,
            "peak_source": self.peak_source,
            "mean_mfu": mean,
        }
