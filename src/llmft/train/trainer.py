"""The one training loop: every method, data format and strategy (single, DDP, FSDP) runs through it.

A step consumes one global batch: ``accumulation_steps`` micro-batches per process. The loss of the
step is the sum of every target token's loss divided by the number of target tokens in the whole
global batch (counted before any backward), so that accumulation gives exactly the gradient of one big
batch (see :mod:`llmft.train.loss`).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from llmft.config import TrainSection, batch_problem
from llmft.data.pipeline import TokenizedDataset, eval_loader, train_loader
from llmft.distributed.env import DistEnv
from llmft.distributed.parallelize import clip_grad_norm_, gradient_sync
from llmft.errors import UserError
from llmft.launch import stop as stop_requests
from llmft.launch.stop import Preempted
from llmft.train.evaluate import Batch, batch_targets, describe_eval, evaluate_split, forward_logits
from llmft.train.loss import class_loss_sum, token_loss_sum
from llmft.train.metrics import MetricsLogger
from llmft.train.observe import Observer
from llmft.train.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; usually the learning rate is too high."""


@dataclass
class StepResult:
    step: int
    loss: float  # mean loss per target token over the global batch
    target_tokens: int
    real_tokens: int  # non-padding input tokens, all processes
    grad_norm: float
    lr: float
    step_time_s: float
    rows: int = 0  # sequences (padded or packed rows), all processes


@dataclass
class TrainSummary:
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    eval_loss: float | None = None
    eval_metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation's row
    train_time_s: float = 0.0
    real_tokens: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.real_tokens / self.train_time_s if self.train_time_s else 0.0

    def window(self, first: bool, size: int = 10) -> float:
        """Mean train loss over the first or last ``size`` steps (less noisy than one step).

        Steps without target tokens (loss NaN) are left out of the mean.
        """
        chunk = [x for x in (self.losses[:size] if first else self.losses[-size:]) if math.isfinite(x)]
        return sum(chunk) / len(chunk) if chunk else float("nan")


@dataclass(frozen=True)
class CheckpointPolicy:
    """When the trainer saves its whole state, and how.

    A checkpoint is due every ``every_steps`` steps (0: never on an interval), at the end of each epoch
    (``at_epoch_end``), at the end of the run when either is set, and when a stop signal arrives.
    ``save(trainer, reason, summary)`` writes one (every rank calls it together) and returns its folder.
    """

    save: Callable[[Trainer, str, TrainSummary], Path]
    every_steps: int = 0
    at_epoch_end: bool = True


def accumulation_steps(cfg: TrainSection, world_size: int) -> int:
    """Micro-batches per process per optimizer step: batch_size / (micro_batch_size x world size)."""
    problem = batch_problem(cfg.batch_size, cfg.micro_batch_size, world_size)
    if problem:
        raise UserError(problem)
    return cfg.batch_size // (cfg.micro_batch_size * world_size)


class Trainer:
    """Optimises the trainable parameters of ``model`` on tokenized data.

    Args:
        model: the model to train; parameters with ``requires_grad`` are optimised.
        cfg: the ``train`` section.
        train_data / val_data: tokenized examples; ``val_data`` may be None.
        pad_id: token id used to pad batches (never a target).
        env: rank, world size, device.
        metrics: where rows go (main process only); None to log nothing (see :meth:`attach_metrics`).
        compute_dtype: autocast dtype, or None for plain fp32.
        group_by_length: batch training examples of similar length (padding batches only).
        eval_hooks: called with the step at every evaluation, on every rank; the entries of the dicts
            they return join the eval row (e.g. task metrics of generated answers).
        checkpoint: when and how to save step checkpoints; None: no checkpoints.

    ``observer`` (FLOPs, MFU and peak memory in the rows) may be set before :meth:`fit`.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainSection,
        train_data: TokenizedDataset,
        val_data: TokenizedDataset | None,
        pad_id: int,
        env: DistEnv,
        metrics: MetricsLogger | None = None,
        compute_dtype: torch.dtype | None = None,
        group_by_length: bool = False,
        eval_hooks: Sequence[Callable[[int], dict]] = (),
        checkpoint: CheckpointPolicy | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.env = env
        self.metrics: MetricsLogger | None = None
        self.attach_metrics(metrics)
        self.compute_dtype = compute_dtype
        self.accumulation_steps = accumulation_steps(cfg, env.world_size)
        pin = env.device.type == "cuda"
        self.train_loader = train_loader(
            train_data,
            cfg.micro_batch_size,
            pad_id,
            cfg.seed,
            env.rank,
            env.world_size,
            pin_memory=pin,
            group_by_length=group_by_length,
            global_batch=cfg.batch_size,
        )
        self.val_loader = (
            eval_loader(val_data, cfg.micro_batch_size, pad_id, pin_memory=pin) if val_data else None
        )
        # Micro-batches of a whole epoch, taken now: after a resume the loader counts only those left.
        self.epoch_micro_batches = len(self.train_loader)
        self.steps_per_epoch = math.ceil(len(self.train_loader) / self.accumulation_steps)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(model, cfg, env.device)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        self.step = 0
        # Data position: the epoch, and the micro-batches of it already trained on (checkpoints save it).
        self.epoch = 0
        self.micro_batches_done = 0
        self.evaluated_at = -1
        self.observer: Observer | None = None  # adds FLOPs, MFU and peak memory to the rows
        self.eval_hooks = list(eval_hooks)
        self.checkpoint = checkpoint
        self.stop_signal: str | None = None  # SIGTERM/SIGUSR1, from the start of the command (see fit)

    def attach_metrics(self, metrics: MetricsLogger | None) -> None:
        """Send rows to ``metrics`` from now on (only the main process writes)."""
        self.metrics = metrics if self.env.is_main else None

    # ---------------------------------------------------------------------------------------------
    # One step, in two parts that tests can also call on their own.

    def _to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.env.device, non_blocking=True) for k, v in batch.items()}

    def _logits(self, batch: Batch) -> torch.Tensor:
        return forward_logits(self.model, batch, self.env.device, self.compute_dtype)

    def loss_sum(self, batch: Batch) -> torch.Tensor:
        """Forward pass of one micro-batch; returns the summed loss of its targets.

        Targets are label tokens (causal LM: logits B x T x V) or, for classification, one class per row
        (logits B x C of the pooled last token).
        """
        batch = self._to_device(batch)
        logits = self._logits(batch)
        if "class_labels" in batch:
            return class_loss_sum(logits, batch["class_labels"])
        return token_loss_sum(logits, batch["labels"])

    def accumulate_gradients(self, micro_batches: list[Batch]) -> tuple[torch.Tensor, int]:
        """Forward and backward over the micro-batches of one global batch.

        Each micro-batch's summed loss is divided by the number of target tokens of the whole global
        batch (all micro-batches, all processes), so the accumulated gradient equals the gradient of
        the mean token loss of the global batch. Returns (summed loss, global target tokens).

        With several processes, DDP and FSDP *average* the gradients over them, but the division by the
        global count already makes the sum over processes the right gradient; so each loss is also
        multiplied by the world size (``x * 1 / n`` is bit-identical to ``x / n`` for one process).
        """
        local_targets = sum(batch_targets(mb) for mb in micro_batches)
        global_targets = int(self.env.sum(torch.tensor(local_targets, dtype=torch.long)))
        total = torch.zeros((), device=self.env.device)
        if global_targets == 0:
            return total, 0
        for index, batch in enumerate(micro_batches):
            # DDP all-reduces only after the last micro-batch (see gradient_sync).
            with gradient_sync(self.model, enabled=index == len(micro_batches) - 1):
                loss = self.loss_sum(batch)
                (loss * self.env.world_size / global_targets).backward()
            total += loss.detach()
        return self.env.sum(total), global_targets

    def optimizer_step(self) -> float:
        """Clip, step the optimizer and the schedule, clear gradients; returns the pre-clip norm.

        A non-finite gradient norm stops the run before the step would write NaN into the weights.
        """
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm is not None else math.inf
        grad_norm = clip_grad_norm_(self.parameters, max_norm)
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(
                f"gradient norm is {grad_norm} at step {self.step + 1}; lower train.lr (now {self.cfg.lr:g}), "
                f"keep train.max_grad_norm set, or use train.precision fp32"
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def train_step(self, micro_batches: list[Batch]) -> StepResult:
        started = time.perf_counter()
        lr = self.scheduler.get_last_lr()[0]
        loss_sum, targets = self.accumulate_gradients(micro_batches)
        loss = float(loss_sum) / targets if targets else float("nan")
        if targets and not math.isfinite(loss):
            raise TrainingDiverged(
                f"train loss is {loss} at step {self.step + 1}; lower train.lr (now {self.cfg.lr:g}) or "
                f"use train.precision fp32"
            )
        if targets:
            grad_norm = self.optimizer_step()
        else:
            # No target token anywhere in the global batch (the count is summed over the ranks, so every
            # rank takes this branch together): no gradient to clip or apply, so the optimizer does not
            # step. The step still counts and the schedule moves on, so steps, schedule and data position
            # stay aligned (the loss is NaN in the metrics, left out of the summary's means).
            log.warning(
                "step %d: the global batch has no target token; optimizer step skipped", self.step + 1
            )
            with warnings.catch_warnings():  # torch warns when the schedule steps before the optimizer
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step\\(\\)` before")
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            grad_norm = 0.0
        self.step += 1
        local = [
            sum(int(mb["num_real_tokens"]) for mb in micro_batches),
            sum(len(mb["input_ids"]) for mb in micro_batches),
        ]
        real, rows = (int(x) for x in self.env.sum(torch.tensor(local)))
        return StepResult(self.step, loss, targets, real, grad_norm, lr, time.perf_counter() - started, rows)

    # ---------------------------------------------------------------------------------------------

    def data_state(self) -> dict[str, int]:
        """Where the data stream stands: the epoch, the micro-batches of it already trained on by each
        process, and the samples of it consumed by all processes together (which a different number of
        processes can continue from). A finished epoch is stated as the start of the next."""
        epoch, done = self.epoch, self.micro_batches_done
        if done >= self.epoch_micro_batches:
            epoch, done = epoch + 1, 0
        return {
            "epoch": epoch,
            "micro_batches_done": done,
            "samples_done": done * self.cfg.micro_batch_size * self.env.world_size,
        }

    def load_data_state(self, state: dict[str, int]) -> None:
        """Continue the data stream from ``state`` (of :meth:`data_state`): same order, nothing repeated.

        Each process reads every world-size-th sample of one global order, so after S samples of an
        epoch each of W processes has read S / W; a state saved with another number of processes
        continues from the same global position when S divides into whole micro-batches.
        """
        self.epoch = int(state["epoch"])
        samples = int(state.get("samples_done", state["micro_batches_done"] * self.cfg.micro_batch_size))
        per_batch = self.cfg.micro_batch_size * self.env.world_size
        if samples % per_batch:
            raise UserError(
                f"the checkpoint stopped {samples} samples into epoch {self.epoch}, which {self.env.world_size} "
                f"process(es) x train.micro_batch_size {self.cfg.micro_batch_size} cannot continue from; "
                f"resume with the number of processes and micro_batch_size it was written with"
            )
        self.micro_batches_done = samples // per_batch

    def restore(self, state: dict) -> TrainSummary:
        """Continue from a checkpoint's trainer state (weights, optimizer and RNG are loaded by
        :func:`llmft.checkpoint.state.load_tensors`); returns the summary of the steps already done."""
        self.step = int(state["step"])
        self.load_data_state(state)
        self.evaluated_at = int(state.get("evaluated_at", -1))
        saved = state.get("summary", {})
        return TrainSummary(
            steps=self.step,
            losses=[float(x) for x in saved.get("losses", [])],
            eval_loss=saved.get("eval_loss"),
            eval_metrics=dict(saved.get("eval_metrics") or {}),
            train_time_s=float(saved.get("train_time_s", 0.0)),
            real_tokens=int(saved.get("real_tokens", 0)),
        )

    def global_batches(self) -> Iterator[tuple[int, list[Batch]]]:
        """(epoch, micro-batches) for every optimizer step; each epoch reshuffles deterministically.

        Starts at :meth:`data_state`'s position; with ``max_steps`` set, epochs continue until that many
        steps are done.
        """
        while self.cfg.max_steps is not None or self.epoch < self.cfg.epochs:
            skip = self.micro_batches_done * self.cfg.micro_batch_size
            self.train_loader.sampler.set_epoch(self.epoch, start=skip)
            group: list[Batch] = []
            for batch in self.train_loader:
                group.append(batch)
                if len(group) == self.accumulation_steps:
                    self.micro_batches_done += len(group)
                    yield self.epoch, group
                    group = []
            if group:
                # The epoch's remainder is a step of its own (nothing is dropped): a smaller batch
                # whose gradient is the mean over its own target tokens, like HF Trainer's last step.
                self.micro_batches_done += len(group)
                yield self.epoch, group
            self.epoch += 1
            self.micro_batches_done = 0

    def evaluate(self) -> dict[str, float]:
        """Loss per target over the whole validation split, and its perplexity (causal LM) or its
        accuracy and macro-F1 (classification); see :func:`evaluate_split`."""
        if self.val_loader is None:
            return {}
        return evaluate_split(self.model, self.val_loader, self.env.device, self.compute_dtype)

    def fit(self, summary: TrainSummary | None = None) -> TrainSummary:
        """Train for ``total_steps`` optimizer steps, evaluating every ``eval_every`` and at the end.

        ``summary``: the steps already done (a resumed run, see :meth:`restore`). SIGTERM and SIGUSR1
        stop the run after the current step with a checkpoint (:class:`Preempted`).
        """
        summary = summary or TrainSummary()
        self.model.train()
        progress = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="finetune",
            unit="step",
            dynamic_ncols=True,
            disable=not (self.cfg.progress and self.env.is_main),
        )
        # Console log lines go through tqdm while the bar is drawn, so they do not tear it. SIGTERM and
        # SIGUSR1 (a scheduler's warning before it kills or preempts a job) ask the loop to stop after the
        # current step; under `llmft finetune` the handlers are in already and this scope nests.
        with logging_redirect_tqdm(loggers=[logging.getLogger("llmft")]), stop_requests.listen():
            if self.step < self.total_steps:
                # A stop asked for while the model was loading (llmft.launch.stop listens from the start
                # of the command): every rank agrees and leaves before training, saving nothing.
                self.stop_signal = self.stop_signal or stop_requests.requested()
                if self.env.any(self.stop_signal is not None):
                    progress.close()
                    raise Preempted(self.stop_signal or "a signal on another rank", self.step, None, False)
                self._loop(summary, progress)
            else:
                progress.close()
        if self.val_loader is not None and self.evaluated_at != summary.steps:
            summary.eval_loss = self._eval_and_log(summary.steps, summary)
        return summary

    def _loop(self, summary: TrainSummary, progress: tqdm) -> None:
        run_started = tick = time.perf_counter()
        try:
            for epoch, micro_batches in self.global_batches():
                result = self.train_step(micro_batches)
                # Wall time of the step including batch preparation, so tokens/s is honest.
                now = time.perf_counter()
                result.step_time_s, tick = now - tick, now
                summary.steps = result.step
                summary.losses.append(result.loss)
                summary.train_time_s += result.step_time_s
                summary.real_tokens += result.real_tokens
                self._log_step(result, epoch, run_started)
                self._show_progress(progress, result, summary)
                if self._evaluate_if_due(result.step, summary):
                    tick = time.perf_counter()  # evaluation time is not training time
                if self._checkpoint_if_due(result.step, summary):
                    tick = time.perf_counter()  # nor is saving
                if result.step >= self.total_steps:
                    break
        finally:
            progress.close()

    def _log_step(self, result: StepResult, epoch: int, run_started: float) -> None:
        """The step's metrics row, every ``log_every`` steps and at the last step."""
        if result.step % self.cfg.log_every and result.step != self.total_steps:
            return
        self._log(
            {
                "step": result.step,
                "epoch": round(epoch + self._epoch_fraction(result.step), 4),
                "loss": result.loss,
                "lr": result.lr,
                "grad_norm": result.grad_norm,
                "target_tokens": result.target_tokens,
                "real_tokens": result.real_tokens,
                "tokens_per_s": result.real_tokens / result.step_time_s,
                "step_time_s": result.step_time_s,
                "elapsed_s": time.perf_counter() - run_started,
                **self._observe(result),
            }
        )

    def _show_progress(self, progress: tqdm, result: StepResult, summary: TrainSummary) -> None:
        progress.update(1)
        postfix = {
            "loss": f"{result.loss:.4f}",
            "tok_s": f"{summary.tokens_per_s:,.0f}",
            "lr": f"{result.lr:.2e}",
        }
        if self.observer is not None and self.observer.mfus:
            postfix["mfu"] = f"{self.observer.mfus[-1]:.1%}"
        progress.set_postfix(postfix)

    def _evaluate_if_due(self, step: int, summary: TrainSummary) -> bool:
        """Evaluate every ``eval_every`` steps (when there is a validation split); returns whether it did."""
        if not (self.cfg.eval_every and step % self.cfg.eval_every == 0 and self.val_loader):
            return False
        summary.eval_loss = self._eval_and_log(step, summary)
        self.evaluated_at = step
        return True

    def _checkpoint_if_due(self, step: int, summary: TrainSummary) -> bool:
        """Save a checkpoint when one is due or a stop signal came; returns whether one was saved.

        Raises:
            Preempted: after saving, when any rank got a stop signal (every rank stops after the same step).
        """
        self.stop_signal = self.stop_signal or stop_requests.requested()
        stop = self.env.any(self.stop_signal is not None)
        reason = "preempted" if stop else self._checkpoint_reason(step)
        checkpoint = None
        if reason and self.checkpoint is not None:
            checkpoint = self.checkpoint.save(self, reason, summary)
        if stop:
            raise Preempted(self.stop_signal or "a signal on another rank", step, checkpoint)
        return bool(reason and self.checkpoint is not None)

    def _checkpoint_reason(self, step: int) -> str | None:
        """Why a checkpoint is due after ``step`` under the checkpoint policy, or None."""
        policy = self.checkpoint
        if policy is None:
            return None
        if policy.every_steps and step % policy.every_steps == 0:
            return "interval"
        if policy.at_epoch_end and self.micro_batches_done >= self.epoch_micro_batches:
            return "epoch_end"
        if step >= self.total_steps and (policy.every_steps or policy.at_epoch_end):
            return "end"
        return None

    def _epoch_fraction(self, step: int) -> float:
        within = (step - 1) % self.steps_per_epoch + 1
        return within / self.steps_per_epoch

    def _eval_and_log(self, step: int, summary: TrainSummary) -> float:
        row = self.evaluate()
        for hook in self.eval_hooks:  # e.g. generation-based task metrics; every rank calls each hook
            row.update(hook(step))
        summary.eval_metrics = row
        self._log({"step": step, **row})
        log.info("step %d: %s", step, describe_eval(row))
        return row["eval_loss"]

    def _observe(self, result: StepResult) -> dict:
        """FLOPs, MFU and peak memory of the step (nothing without an observer)."""
        if self.observer is None:
            return {}
        return self.observer.step_row(result.real_tokens, result.rows, result.step_time_s)

    def _log(self, row: dict) -> None:
        if self.metrics is not None:
            self.metrics.log(row)
