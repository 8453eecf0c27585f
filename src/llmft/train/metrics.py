"""Metrics sinks: ``metrics.jsonl`` (one JSON object per row), TensorBoard, and a PNG loss plot."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def finite_or_none(value: Any) -> Any:
    """A float that JSON can hold: NaN and infinities become null (a step with no target tokens)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsLogger:
    """Writes each row to metrics.jsonl (flushed at once, so a crash keeps what was logged) and to
    TensorBoard under ``train/`` or ``eval/``."""

    def __init__(self, output_dir: Path, tensorboard: bool = True) -> None:
        self.path = output_dir / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        self._writer = None
        self.tensorboard_dir: Path | None = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard_dir = output_dir / "tensorboard"
            self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir))

    def log(self, row: dict[str, Any]) -> None:
        row = {key: finite_or_none(value) for key, value in row.items()}
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()
        if self._writer is not None:
            step = row["step"]
            for key, value in row.items():
                if key == "step" or value is None or not isinstance(value, (int, float)):
                    continue
                tag = f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
                self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_losses(metrics_path: Path, png_path: Path) -> Path:
    """Train loss per step and eval loss at its steps, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", linewidth=1.2, markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per target token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path
