"""Metrics sinks: ``metrics.jsonl`` (one JSON object per row), TensorBoard, W&B (when installed and
enabled; ``WANDB_MODE=offline`` works without network), and PNG plots of loss, learning rate and
throughput."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from llmft.errors import UserError

log = logging.getLogger(__name__)


def check_wandb(enabled: bool) -> None:
    """With ``logging.wandb`` on, wandb must be importable (it is not a dependency of llmft)."""
    if not enabled:
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise UserError(
            "logging.wandb: true, but wandb is not installed; pip install wandb (WANDB_MODE=offline needs "
            "no account or network), or set --logging.wandb false"
        ) from None


def finite_or_none(value: Any) -> Any:
    """A float that JSON can hold: NaN and infinities become null (a step with no target tokens)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsLogger:
    """Writes each row to a JSON lines file (flushed at once, so a crash keeps what was logged) and to
    TensorBoard under ``train/`` or ``eval/``."""

    def __init__(
        self,
        path: Path,
        tensorboard_dir: Path | None = None,
        wandb_project: str | None = None,
        run_config: dict[str, Any] | None = None,
        resume_step: int | None = None,
    ) -> None:
        """``path``: the JSON lines file, in the run folder (W&B writes beside it); ``tensorboard_dir``:
        where TensorBoard's events go (None: no TensorBoard). ``resume_step``: the run continues from a
        checkpoint after this step; rows that an interrupted run logged after it are dropped (they are
        logged again), so each step has one row."""
        self.path = path
        output_dir = path.parent
        if resume_step is not None and self.path.is_file():
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # the last line of a killed run may be cut short
                    continue
                if row.get("step", 0) <= resume_step:
                    kept.append(row)
            self.path.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
        self._file = self.path.open("a", encoding="utf-8")
        self._writer = None
        self._wandb = None
        if wandb_project is not None:
            import wandb

            self._wandb = wandb.init(
                project=wandb_project, dir=str(output_dir), name=output_dir.name, config=run_config or {}
            )
        self.tensorboard_dir = tensorboard_dir
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides the events an interrupted run wrote after the checkpoint.
            purge = None if resume_step is None else resume_step + 1
            self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir), purge_step=purge)

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
            if row.get("eval_samples"):
                self._writer.add_text("eval/samples", samples_markdown(row["eval_samples"]), step)
        if self._wandb is not None:
            self._wandb.log(
                {
                    (f"eval/{k[5:]}" if k.startswith("eval_") else f"train/{k}"): v
                    for k, v in row.items()
                    if k != "step" and isinstance(v, (int, float))
                },
                step=row["step"],
            )

    def summary(self, values: dict[str, Any]) -> None:
        """Record end-of-run figures in W&B's run summary (metrics.jsonl holds only per-step rows):
        numbers, and strings such as where the MFU peak came from."""
        if self._wandb is not None:
            self._wandb.summary.update(
                {k: finite_or_none(v) for k, v in values.items() if isinstance(v, (int, float, str))}
            )

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()
        if self._wandb is not None:
            self._wandb.finish()


def samples_markdown(samples: list[dict[str, Any]]) -> str:
    """Sample generations as Markdown for TensorBoard's text tab (code blocks keep the prompt's lines)."""
    parts = []
    for i, sample in enumerate(samples, start=1):
        references = "\n".join(sample.get("references") or [])
        parts.append(
            f"**sample {i}**\n\nprompt:\n\n```\n{sample['prompt']}\n```\n\ncompletion:\n\n"
            f"```\n{sample['completion']}\n```\n\nreference:\n\n```\n{references}\n```"
        )
    return "\n\n".join(parts)


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


def _series(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if r.get(key) is not None]


def plot_run(metrics_path: Path, output_dir: Path) -> list[Path]:
    """loss.png (:func:`plot_losses`), lr.png and throughput.png (real tokens/s, and MFU where known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [plot_losses(metrics_path, output_dir / "loss.png")]
    rows = read_metrics(metrics_path)
    for name, key, label in (
        ("lr.png", "lr", "learning rate"),
        ("throughput.png", "tokens_per_s", "real tokens/s"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
        series = _series(rows, key)
        if series:
            ax.plot(*zip(*series), linewidth=1.2)
        mfu = _series(rows, "mfu") if key == "tokens_per_s" else []
        if mfu:
            twin = ax.twinx()
            twin.plot(*zip(*mfu), color="tab:orange", linewidth=1.0)
            twin.set_ylabel("MFU (orange)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(output_dir / name)
        plt.close(fig)
        paths.append(output_dir / name)
    return paths
