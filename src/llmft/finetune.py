"""``llmft finetune``: the run path from config to written artifacts, top to bottom.

Order of operations, as named stages (:func:`_finetune` calls them in turn):
 0. check the output folder against ``--overwrite`` and ``--resume`` (never lose an earlier run);
 1. :func:`_check_inputs`, everything that needs no weights, each step failing fast before the run
    folder is touched: the launch (strategy vs. processes, HSDP mesh, batch split over the processes);
    the model (preset | local folder | hub id) and its tokenizer; all data read, rendered and tokenized
    (a bad row stops here, naming file, row and field); the PEFT method and freeze strategy against a
    weightless copy of the model (a LoRA target that does not exist); a resume's checkpoint;
 2. join the process group (ddp, fsdp): every check above ran in each process before any waits;
 3. :func:`_build_model`: load the model, apply activation checkpointing, seed, then the PEFT method
    (adapters are added after the base is loaded, and the method decides what trains); with fsdp,
    every rank does this on the meta device and shards the model, and rank 0 alone reads the weights
    and sends each rank its shards (:mod:`llmft.distributed.loading`); with ddp, the model is wrapped;
 4. :func:`_make_trainer`: the trainer with its eval hooks and checkpoint policy (it checks the batch
    layout and that something trains), the memory plan, a resume's state;
 5. :func:`_train`: claim the output folder, write the resolved config, train;
 6. :func:`_write_run`: save, plot, generate a sample, write the summary (rank 0 alone writes files and
    logs; the sharded model saves through a gather to rank 0).

The names of the run folder's files are in :mod:`llmft.checkpoint.outputs`.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmft.build import build_model
from llmft.checkpoint.outputs import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    TRAIN_LOG,
    RunLog,
    claim_output_dir,
    is_tokenizer_file,
    save_artifacts,
)
from llmft.checkpoint.resume import ResumePlan, check_resume_config, plan_resume
from llmft.checkpoint.state import (
    discard_newer,
    latest_checkpoint,
    load_tensors,
    save_checkpoint,
    verify_checkpoint,
)
from llmft.config import Config
from llmft.data.pipeline import DataBundle, prepare_data
from llmft.distributed.env import DistEnv, check_launch, setup_distributed, teardown_distributed
from llmft.distributed.parallelize import apply_ddp, full_state_dict
from llmft.evaluation.generations import generation_eval_hook
from llmft.inference.generate import generate_text
from llmft.inference.predict import classify
from llmft.launch import stop as stop_requests
from llmft.memory import run as memory_run
from llmft.memory.estimator import Estimate
from llmft.models.heads import CLASSIFIER_FILE, ClassifierSpec, attach_head
from llmft.models.loader import ModelSource, check_max_seq_len, load_tokenizer, model_skeleton, resolve_model
from llmft.models.presets import llmft_home
from llmft.models.structure import unwrap
from llmft.peft.freeze import check_freeze, describe_groups
from llmft.peft.methods import check_method, count_parameters
from llmft.precision import matmul_precision, resolve_precision
from llmft.train.metrics import MetricsLogger, check_wandb, finite_or_none, plot_run
from llmft.train.observe import peak_memory
from llmft.train.trainer import CheckpointPolicy, Trainer, TrainSummary, accumulation_steps

log = logging.getLogger("llmft")


@dataclass
class RunResult:
    output_dir: Path
    summary: TrainSummary
    base_model: str
    precision: str
    device: str
    sample_prompt: str
    sample_text: str
    files: dict[str, str]
    model: Any = field(default=None, repr=False)  # the trained model, for callers that go on using it
    tokenizer: Any = field(default=None, repr=False)
    is_main: bool = True  # False on the other ranks of a multi-process run: they report nothing
    notes: list[str] = field(default_factory=list)  # e.g. estimated vs measured memory

    def report(self) -> str:
        """The closing message: what happened, where everything was written, one sample."""
        s = self.summary
        window = max(1, min(10, s.steps // 2))
        if s.eval_loss is None:
            eval_part = ""
        elif "eval_accuracy" in s.eval_metrics:
            eval_part = (
                f"; eval loss {s.eval_loss:.4f}, accuracy {100 * s.eval_metrics['eval_accuracy']:.1f}%, "
                f"macro-F1 {s.eval_metrics['eval_macro_f1']:.3f}"
            )
        else:
            eval_part = f"; eval loss {s.eval_loss:.4f} (perplexity {math.exp(min(s.eval_loss, 50)):.1f})"
        lines = [
            f"Done: {s.steps} steps in {s.train_time_s:.1f}s, {s.tokens_per_s:,.0f} tokens/s "
            f"({self.device}, {self.precision}).",
            f"Train loss {s.window(True, window):.4f} (first {window} step{'s' if window > 1 else ''}) -> "
            f"{s.window(False, window):.4f} (last {window}){eval_part}",
            *self.notes,
            f"Wrote {self.output_dir}/",
        ]
        width = max(len(k) for k in self.files)
        lines += [f"  {key:<{width}}  {value}" for key, value in self.files.items()]
        lines += [
            f"Sample (prompt {self.sample_prompt!r}):",
            f"  {self.sample_prompt}{self.sample_text}",
        ]
        return "\n".join(lines)


def _inputs(cfg: Config) -> dict[str, Path]:
    """What the run reads from disk, by config field: an --overwrite must never delete these."""
    inputs = {"LLMFT_HOME": llmft_home()}
    if Path(cfg.model.name).expanduser().exists():
        inputs["model.name"] = Path(cfg.model.name)
    for name in ("path", "prompt_template", "chat_template"):
        value = getattr(cfg.data, name)
        if value and Path(value).expanduser().exists():
            inputs[f"data.{name}"] = Path(value)
    return inputs


def finetune(cfg: Config, overwrite: bool = False, resume: str | None = None) -> RunResult:
    """Run one fine-tuning job described by ``cfg``; see the module docstring for the order.

    ``resume``: ``auto`` (the latest checkpoint in the run folder, if any) or a checkpoint or run folder.
    SIGTERM and SIGUSR1 are recorded from here on (a scheduler's warning that comes while the model is
    still loading): training then stops before its first step (:class:`~llmft.launch.stop.Preempted`).
    """
    output_dir = cfg.resolved_output_dir()
    plan, overwrite = plan_resume(resume, output_dir, overwrite, _inputs(cfg))
    run_log = RunLog()
    finished = False
    try:
        with stop_requests.listen():
            result = _finetune(cfg, output_dir, overwrite, run_log, plan)
        finished = True
        return result
    finally:
        run_log.close()
        teardown_distributed(wait=finished)


def _finetune(
    cfg: Config, output_dir: Path, overwrite: bool, run_log: RunLog, plan: ResumePlan | None
) -> RunResult:
    """The stages of a run, in order (see the module docstring)."""
    checked = _check_inputs(cfg, output_dir, plan)
    # Each process checked its inputs before joining, so a mistake never leaves processes waiting.
    env = setup_distributed(cfg.distributed)
    built = _build_model(cfg, checked, env)
    trainer, done, planned = _make_trainer(cfg, checked, built, output_dir, plan)
    trained = _train(cfg, checked, trainer, done, planned, output_dir, overwrite, plan, run_log)
    return _write_run(cfg, checked, built, trained, output_dir)


@dataclass
class _Checked:
    """What the input checks produced: the model's source and tokenizer, the tokenized data, the
    classifier head (task classification), a weightless copy of the model, and the resolved config."""

    source: ModelSource
    tokenizer: Any
    data: DataBundle
    classifier: ClassifierSpec | None
    skeleton: nn.Module
    resolved: Config


def _check_inputs(cfg: Config, output_dir: Path, plan: ResumePlan | None) -> _Checked:
    """Every input check that needs no weights, before the first log line, so that a mistake is
    reported alone, at once: the launch, the model's name, its tokenizer, every data row, the
    method's targets (checked on a weightless copy of the model), a resume's checkpoint."""
    accumulation_steps(cfg.train, check_launch(cfg.distributed))
    check_wandb(cfg.logging.wandb)
    source = resolve_model(cfg.model)
    tokenizer = load_tokenizer(source, cfg.model)
    data = prepare_data(cfg.data, tokenizer, cfg.train.seed, cfg.task)
    classifier = (
        ClassifierSpec(tuple(data.label_names), cfg.head, tokenizer.pad_token_id)
        if cfg.task == "classification"
        else None
    )
    skeleton = model_skeleton(source, cfg.model, classifier)
    if classifier is not None:  # the configured head (an MLP replaces `score`), as build_model attaches it
        skeleton = attach_head(skeleton, classifier)
    check_max_seq_len(skeleton.config, cfg.data.max_seq_len)
    check_method(skeleton, cfg.peft)
    check_freeze(skeleton, cfg.freeze)
    # Absolute paths, so the written config reproduces the run from any working folder.
    resolved = cfg.model_copy(
        update={
            "output_dir": os.path.abspath(output_dir),
            "data": cfg.data.model_copy(update={"path": data.source if cfg.data.path else None}),
        }
    )
    if plan is not None:  # a change that breaks the resume is an error here, before any work
        info = verify_checkpoint(plan.checkpoint)
        check_resume_config(info, resolved.model_dump(mode="json"), check_launch(cfg.distributed))
    return _Checked(source, tokenizer, data, classifier, skeleton, resolved)


@dataclass
class _Built:
    """The model to train, where it runs, and in what precision."""

    model: nn.Module
    env: DistEnv
    compute_dtype: torch.dtype | None  # autocast dtype; None: no autocast
    precision: str  # what the matrix products run in, for the log and the summary


def _build_model(cfg: Config, checked: _Checked, env: DistEnv) -> _Built:
    """The trainable model (sharded or wrapped for the strategy), per-rank seeds, the precision."""
    log.info("model: %s", checked.source.describe())
    data = checked.data
    log.info("data: %s from %s (format %s)", data.stats.describe(), data.source, data.format.name)
    model = build_model(cfg, checked.source, env, checked.classifier)
    log.info("%s: %s", cfg.peft.method, count_parameters(model).describe())
    log.info("parameters by group:\n%s", describe_groups(model))
    if env.strategy == "ddp":
        model = apply_ddp(model, env)
    if env.distributed:
        # Every rank started from the same seed (identical adapters); dropout now draws a stream of its
        # own per rank, or all ranks would drop the same positions of their different sequences.
        torch.manual_seed(cfg.train.seed + env.rank)
    compute_dtype = resolve_precision(cfg.train.precision, env.device)
    precision = matmul_precision(compute_dtype, cfg.model, cfg.distributed.fsdp)  # what the products run in
    return _Built(model, env, compute_dtype, precision)


def _make_trainer(
    cfg: Config, checked: _Checked, built: _Built, output_dir: Path, plan: ResumePlan | None
) -> tuple[Trainer, TrainSummary | None, Estimate]:
    """The trainer with its eval hooks and checkpoint policy, the memory plan of the run, and (when
    resuming) the summary of the steps already done."""
    model, env, compute_dtype, data = built.model, built.env, built.compute_dtype, checked.data
    resolved_yaml = checked.resolved.to_yaml()
    classifier = checked.classifier
    extra = {CLASSIFIER_FILE: json.dumps(classifier.to_json(), indent=2) + "\n"} if classifier else {}

    def save_state(trainer: Trainer, reason: str, summary: TrainSummary) -> Path:
        path = save_checkpoint(
            trainer, output_dir, resolved_yaml, summary, cfg.checkpoint.keep, reason, extra
        )
        log.info("step %d: checkpoint %s (%s)", trainer.step, path, reason)
        return path

    # Task metrics of generated answers at each evaluation (alpaca, grammar, chat; see llmft.evaluation).
    eval_hook = generation_eval_hook(model, checked.tokenizer, data, cfg.eval, env, compute_dtype, cfg.task)
    # The trainer checks the batch layout and that something trains, still before any file is written.
    trainer = Trainer(
        model,
        cfg.train,
        data.train,
        data.val,
        checked.tokenizer.pad_token_id,
        env,
        None,
        compute_dtype,
        group_by_length=cfg.data.group_by_length,
        eval_hooks=[eval_hook] if eval_hook is not None else [],
        checkpoint=CheckpointPolicy(save_state, cfg.checkpoint.every_steps, cfg.checkpoint.at_epoch_end),
    )
    log.info(
        "training: %d steps (%d per epoch), global batch %d = %d micro x %d accumulation x %d process(es), "
        "%s on %s",
        trainer.total_steps,
        trainer.steps_per_epoch,
        cfg.train.batch_size,
        cfg.train.micro_batch_size,
        trainer.accumulation_steps,
        env.world_size,
        built.precision,
        env.device,
    )
    # The planner's estimate of this very run (compared with the measured peak at the end), logged
    # below the line above; its observer adds FLOPs, MFU and peak memory to the metrics rows.
    planned, trainer.observer = memory_run.start(cfg, checked.skeleton.config, env, compute_dtype)
    done = _resume(trainer, plan, output_dir, env) if plan is not None else None
    return trainer, done, planned


def _resume(trainer: Trainer, plan: ResumePlan, output_dir: Path, env: DistEnv) -> TrainSummary:
    """Load a checkpoint into the trainer; returns the summary of the steps already done."""
    # Weights, optimizer state and RNG of every rank (DCP reshards them to this run's layout).
    done = trainer.restore(load_tensors(trainer, plan.checkpoint))
    log.info("resuming from %s at step %d of %d", plan.checkpoint, trainer.step, trainer.total_steps)
    if plan.in_place and env.is_main:  # the later checkpoints belong to the continuation now replaced
        dropped = discard_newer(plan.checkpoint, output_dir)
        if dropped:
            log.warning(
                "--resume: deleted the later checkpoint(s) %s of the run that continued from step %d",
                ", ".join(p.name for p in dropped),
                trainer.step,
            )
    return done


@dataclass
class _Trained:
    """What training gave: its summary, the memory estimate against the measured peak (the summary's
    section and the report's lines), the throughput figures, and the metrics logger (rank 0; closed)."""

    summary: TrainSummary
    memory: dict[str, Any]
    memory_lines: list[str]
    throughput: dict[str, Any]
    metrics: MetricsLogger | None


def _train(
    cfg: Config,
    checked: _Checked,
    trainer: Trainer,
    done: TrainSummary | None,
    planned: Estimate,
    output_dir: Path,
    overwrite: bool,
    plan: ResumePlan | None,
    run_log: RunLog,
) -> _Trained:
    """Claim the run folder (rank 0), then train; every rank trains."""
    env = trainer.env
    metrics = _open_run_folder(cfg, checked.resolved, trainer, output_dir, overwrite, plan, run_log)
    env.barrier()  # the run folder exists before any rank writes a checkpoint into it
    try:
        started = time.perf_counter()
        summary = trainer.fit(done)
        log.info("trained in %.1fs", time.perf_counter() - started)
        memory, memory_lines = memory_run.compare(planned, peak_memory(env.device))
        throughput = trainer.observer.summary()
        if metrics is not None:
            metrics.summary(
                {**throughput, **memory["measured"], "estimated_total_bytes": planned.total_bytes}
            )
    finally:
        if metrics is not None:
            metrics.close()
    return _Trained(summary, memory, memory_lines, throughput, metrics)


def _open_run_folder(
    cfg: Config,
    resolved: Config,
    trainer: Trainer,
    output_dir: Path,
    overwrite: bool,
    plan: ResumePlan | None,
    run_log: RunLog,
) -> MetricsLogger | None:
    """On rank 0: claim the run folder (unless resuming in it), write the resolved config, open the log
    and the metrics logger; returns the logger (None on the other ranks)."""
    if not trainer.env.is_main:
        return None
    if plan is None or not plan.in_place:
        claim_output_dir(output_dir, overwrite, _inputs(cfg))
    (output_dir / CONFIG_FILE).write_text(resolved.to_yaml(), encoding="utf-8")
    run_log.open(output_dir)
    metrics = MetricsLogger(
        output_dir / METRICS_FILE,
        tensorboard_dir=output_dir / TENSORBOARD_DIR if cfg.logging.tensorboard else None,
        wandb_project=cfg.logging.wandb_project if cfg.logging.wandb else None,
        run_config=resolved.model_dump(mode="json"),
        resume_step=trainer.step if plan is not None else None,
    )
    trainer.attach_metrics(metrics)
    return metrics


def _write_run(
    cfg: Config, checked: _Checked, built: _Built, trained: _Trained, output_dir: Path
) -> RunResult:
    """Save the model and tokenizer, plot, generate the closing sample, write summary.json; rank 0
    alone writes (the other ranks send their shards and, under FSDP, take part in the sample)."""
    model, env, tokenizer, summary = built.model, built.env, checked.tokenizer, trained.summary
    state_dict = full_state_dict(model, env)  # FSDP: every rank sends its shards to rank 0
    # The closing sample's prompt (in the training format: alpaca's template, the chat template, ...).
    prompt = cfg.generation.prompt or checked.data.format.example_prompt
    if not env.is_main:  # it writes nothing; under FSDP it takes part in the closing sample
        sample = _closing_sample(cfg, checked, built, prompt) if env.strategy == "fsdp" else ""
        return RunResult(
            output_dir, summary, "", "", str(env.device), prompt, sample, {}, model, tokenizer, is_main=False
        )
    saved = [p.name for p in save_artifacts(unwrap(model), tokenizer, output_dir, state_dict)]
    if checked.classifier is not None:
        # The classes and head, for `llmft predict` (a full model also has them in config.json).
        (output_dir / CLASSIFIER_FILE).write_text(
            json.dumps(checked.classifier.to_json(), indent=2) + "\n", encoding="utf-8"
        )
        saved.append(CLASSIFIER_FILE)
    files = _files_written(cfg, saved, trained.metrics, output_dir, checked.source.ref)
    sample = _closing_sample(cfg, checked, built, prompt)
    ref, device = checked.source.ref, str(env.device)
    result = RunResult(
        output_dir, summary, ref, built.precision, device, prompt, sample, files, model, tokenizer
    )
    result.notes = trained.memory_lines
    summary_json = {
        "steps": summary.steps,
        "first_loss": finite_or_none(summary.losses[0]) if summary.losses else None,
        "final_loss": finite_or_none(summary.losses[-1]) if summary.losses else None,
        "eval_loss": summary.eval_loss,
        **{k: v for k, v in summary.eval_metrics.items() if k.startswith("eval_") and k != "eval_loss"},
        "train_time_s": summary.train_time_s,
        "tokens_per_s": summary.tokens_per_s,
        "base_model": ref,
        "device": device,
        "precision": built.precision,
        "sample": {"prompt": prompt, "completion": sample},
        "throughput": trained.throughput,
        "memory": trained.memory,
    }
    text = json.dumps(summary_json, indent=2, ensure_ascii=False) + "\n"
    (output_dir / SUMMARY_FILE).write_text(text, encoding="utf-8")
    return result


def _files_written(
    cfg: Config, saved: list[str], metrics: MetricsLogger, output_dir: Path, base_model: str
) -> dict[str, str]:
    """The report's table of what the run folder holds (plotting the metrics on the way)."""
    files = {
        "model" if cfg.peft.method == "none" else "adapter": ", ".join(
            n for n in saved if not is_tokenizer_file(n)
        ),
        "tokenizer": ", ".join(n for n in saved if is_tokenizer_file(n)),
        "config": CONFIG_FILE,
    }
    files["metrics"] = METRICS_FILE
    if metrics.tensorboard_dir is not None:
        files["tensorboard"] = f"{TENSORBOARD_DIR}/  (tensorboard --logdir {metrics.tensorboard_dir})"
    if cfg.logging.plot:
        files["plot"] = ", ".join(path.name for path in plot_run(metrics.path, output_dir))
    files["log"] = TRAIN_LOG
    files["summary"] = SUMMARY_FILE
    latest = latest_checkpoint(output_dir)
    if latest is not None:
        files["checkpoints"] = f"{CHECKPOINTS_DIR}/  (latest {latest.name}; continue with --resume auto)"
    files["base model"] = base_model
    return files


def _closing_sample(cfg: Config, checked: _Checked, built: _Built, prompt: str) -> str:
    """The model's continuation of ``prompt`` in the training format, or for a classifier the predicted
    class of the bare text (one forward, all ranks). A sharded model's forward is collective, so under
    FSDP every rank generates (same prompt, same seed, so the same tokens) with ``synced_gpus``: a rank
    that reaches EOS keeps taking part in the others' forwards until all are done."""
    model, tokenizer, env, compute_dtype = (
        unwrap(built.model),
        checked.tokenizer,
        built.env,
        built.compute_dtype,
    )
    if cfg.task == "classification":
        label, probability = classify(model, tokenizer, [prompt], env.device, compute_dtype)[0]
        return f" -> {label} (p={probability:.2f})"
    text = checked.data.format.generation_prompt(prompt)
    synced = env.strategy == "fsdp" and env.world_size > 1
    return generate_text(
        model, tokenizer, text, cfg.generation, env.device, compute_dtype, cfg.train.seed, synced_gpus=synced
    )
