"""``llmft finetune``: the run path from config to written artifacts, top to bottom.

Order of operations (each step fails fast, before the run folder is touched):
 1. check the output folder (never lose an earlier run without --overwrite);
 2. check the launch: strategy vs. processes, HSDP mesh, batch split over the processes;
 3. resolve the model (preset | local folder | hub id) and load the tokenizer;
 4. read, render and tokenize all data (a bad row stops here, naming file, row and field);
 5. check the PEFT method against a weightless copy of the model (a LoRA target that does not exist);
 6. join the process group (ddp, fsdp): every check above ran in each process before any waits;
 7. load the model, apply activation checkpointing, seed, then the PEFT method (adapters are added
    after the base is loaded, and the method decides what trains); with fsdp, every rank does this on
    the meta device and shards the model, and rank 0 alone reads the weights and sends each rank its
    shards (:mod:`llmft.distributed.loading`); with ddp, the model is wrapped;
 8. claim the output folder, write the resolved config, train, save, plot, generate a sample (rank 0
    alone writes files and logs; the sharded model saves through a gather to rank 0).
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

from llmft.checkpoint.outputs import (
    CONFIG_FILE,
    RUN_MARKER,
    check_output_dir,
    claim_output_dir,
    save_artifacts,
)
from llmft.checkpoint.resume import check_resume_config
from llmft.checkpoint.state import (
    CHECKPOINTS_DIR,
    discard_newer,
    latest_checkpoint,
    load_tensors,
    resolve_resume,
    save_checkpoint,
    verify_checkpoint,
)
from llmft.config import Config
from llmft.data.pipeline import prepare_data
from llmft.distributed.env import DistEnv, check_launch, setup_distributed, teardown_distributed
from llmft.distributed.parallelize import apply_ddp, full_state_dict, unwrap
from llmft.errors import UserError
from llmft.evaluation.generations import generation_eval_hook
from llmft.inference.generate import generate_text
from llmft.inference.predict import classify
from llmft.launch import stop as stop_requests
from llmft.memory import run as memory_run
from llmft.models.build import build_model
from llmft.models.heads import CLASSIFIER_FILE, ClassifierSpec, attach_head
from llmft.models.loader import check_max_seq_len, load_tokenizer, model_skeleton, resolve_model
from llmft.models.presets import llmft_home
from llmft.peft.freeze import check_freeze, describe_groups
from llmft.peft.methods import check_method, count_parameters
from llmft.train.metrics import MetricsLogger, check_wandb, finite_or_none, plot_run
from llmft.train.observe import peak_memory
from llmft.train.optim import resolve_precision
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


class _RunLog:
    """train.log in the run folder, including what was logged before the folder could be claimed
    (those records wait in memory, and are dropped if the run stops before writing anything)."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("llmft")
        self.buffer = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
        self.file: logging.Handler | None = None
        self.logger.addHandler(self.buffer)
        # The file keeps INFO whatever the console shows (the console handler has its own level).
        if self.logger.level == logging.NOTSET or self.logger.level > logging.INFO:
            self.logger.setLevel(logging.INFO)

    def open(self, output_dir: Path) -> None:
        self.file = logging.FileHandler(output_dir / "train.log", encoding="utf-8")
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.buffer.setTarget(self.file)
        self.buffer.flush()
        self.logger.removeHandler(self.buffer)
        self.logger.addHandler(self.file)

    def close(self) -> None:
        for handler in (self.buffer, self.file):
            if handler is not None:
                self.logger.removeHandler(handler)
                handler.close()


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


def _is_tokenizer_file(name: str) -> bool:
    return name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges"))


@dataclass
class _Resume:
    """Where a resumed run continues from, and whether it continues in its own run folder."""

    checkpoint: Path
    in_place: bool


def _plan_resume(resume: str | None, output_dir: Path, overwrite: bool, inputs: dict[str, Path]):
    """Check the output folder against ``--resume``; returns the resume plan (None: a fresh run) and
    whether an earlier run in the folder may be cleared."""
    if resume is None:
        check_output_dir(output_dir, overwrite, inputs)
        return None, overwrite
    if overwrite:
        raise UserError("--resume continues a run and --overwrite deletes it: pass only one of them")
    checkpoint = resolve_resume(resume, output_dir)
    if checkpoint is None:  # --resume auto, nothing saved yet
        interrupted = (output_dir / RUN_MARKER).is_file() and not (output_dir / "summary.json").exists()
        if interrupted:
            log.warning("--resume auto: %s holds no checkpoint yet; starting the run again", output_dir)
        check_output_dir(output_dir, interrupted, inputs)
        return None, interrupted
    in_place = output_dir.resolve() in checkpoint.resolve().parents
    own_steps = (output_dir / CHECKPOINTS_DIR).resolve()
    if in_place and checkpoint.resolve().parent != own_steps:
        # A copy kept inside the run folder (e.g. run/saved/best): continuing there would leave the run's
        # own `latest` and later step folders pointing at another continuation.
        raise UserError(
            f"--resume: '{checkpoint}' lies inside the run folder {output_dir} but is not one of its "
            f"{CHECKPOINTS_DIR}/step-N checkpoints; continue it into a new --output_dir instead"
        )
    if not in_place:  # a new run folder that starts from another run's checkpoint
        check_output_dir(output_dir, False, {**inputs, "--resume": checkpoint})
    return _Resume(checkpoint, in_place), False


def finetune(cfg: Config, overwrite: bool = False, resume: str | None = None) -> RunResult:
    """Run one fine-tuning job described by ``cfg``; see the module docstring for the order.

    ``resume``: ``auto`` (the latest checkpoint in the run folder, if any) or a checkpoint or run folder.
    SIGTERM and SIGUSR1 are recorded from here on (a scheduler's warning that comes while the model is
    still loading): training then stops before its first step (:class:`~llmft.launch.stop.Preempted`).
    """
    output_dir = cfg.resolved_output_dir()
    plan, overwrite = _plan_resume(resume, output_dir, overwrite, _inputs(cfg))
    run_log = _RunLog()
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
    cfg: Config, output_dir: Path, overwrite: bool, run_log: _RunLog, plan: _Resume | None
) -> RunResult:
    # Every input check that needs no weights comes before the first log line, so that a mistake is
    # reported alone, at once: the launch, the model's name, its tokenizer, every data row, the
    # method's targets (checked on a weightless copy of the model). Each process checks for itself
    # before the process group is joined, so a mistake never leaves processes waiting for each other.
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
    env = setup_distributed(cfg.distributed)
    log.info("model: %s", source.describe())
    log.info("data: %s from %s (format %s)", data.stats.describe(), data.source, data.format.name)
    model = build_model(cfg, source, env, classifier)
    log.info("%s: %s", cfg.peft.method, count_parameters(model).describe())
    log.info("parameters by group:\n%s", describe_groups(model))
    if env.strategy == "ddp":
        model = apply_ddp(model, env)
    if env.distributed:
        # Every rank started from the same seed (identical adapters); dropout now draws a stream of its
        # own per rank, or all ranks would drop the same positions of their different sequences.
        torch.manual_seed(cfg.train.seed + env.rank)
    compute_dtype = resolve_precision(cfg.train.precision, env.device)
    # What the matrix products run in: the autocast dtype, else the dtype FSDP gathers the weights in,
    # else their storage dtype.
    precision = (
        "bf16"
        if compute_dtype is not None
        else {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[
            cfg.distributed.fsdp.param_dtype or cfg.model.dtype
        ]
    )

    resolved_yaml = resolved.to_yaml()
    checkpoint = cfg.checkpoint
    extra = {CLASSIFIER_FILE: json.dumps(classifier.to_json(), indent=2) + "\n"} if classifier else {}

    def save_state(trainer: Trainer, reason: str, summary: TrainSummary) -> Path:
        path = save_checkpoint(trainer, output_dir, resolved_yaml, summary, checkpoint.keep, reason, extra)
        log.info("step %d: checkpoint %s (%s)", trainer.step, path, reason)
        return path

    # Task metrics of generated answers at each evaluation (alpaca, grammar, chat; see llmft.evaluation).
    eval_hook = generation_eval_hook(model, tokenizer, data, cfg.eval, env, compute_dtype, cfg.task)
    # The trainer checks the batch layout and that something trains, still before any file is written.
    trainer = Trainer(
        model,
        cfg.train,
        data.train,
        data.val,
        tokenizer.pad_token_id,
        env,
        None,
        compute_dtype,
        group_by_length=cfg.data.group_by_length,
        eval_hooks=[eval_hook] if eval_hook is not None else [],
        checkpoint=CheckpointPolicy(save_state, checkpoint.every_steps, checkpoint.at_epoch_end),
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
        precision,
        env.device,
    )
    # The planner's estimate of this very run (compared with the measured peak at the end).
    planned, trainer.observer = memory_run.start(cfg, skeleton.config, env, compute_dtype)
    done = None
    if plan is not None:
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
    metrics = None
    if env.is_main:
        if plan is None or not plan.in_place:
            claim_output_dir(output_dir, overwrite, _inputs(cfg))
        (output_dir / CONFIG_FILE).write_text(resolved_yaml, encoding="utf-8")
        run_log.open(output_dir)
        metrics = MetricsLogger(
            output_dir,
            tensorboard=cfg.logging.tensorboard,
            wandb_project=cfg.logging.wandb_project if cfg.logging.wandb else None,
            run_config=resolved.model_dump(mode="json"),
            resume_step=trainer.step if plan is not None else None,
        )
        trainer.attach_metrics(metrics)
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

    state_dict = full_state_dict(model, env)  # FSDP: every rank sends its shards to rank 0
    if not env.is_main:
        return _other_rank_result(model, tokenizer, cfg, env, compute_dtype, data, output_dir, summary)
    saved = [p.name for p in save_artifacts(unwrap(model), tokenizer, output_dir, state_dict)]
    if classifier is not None:
        # The classes and head, for `llmft predict` (a full model also has them in config.json).
        (output_dir / CLASSIFIER_FILE).write_text(
            json.dumps(classifier.to_json(), indent=2) + "\n", encoding="utf-8"
        )
        saved.append(CLASSIFIER_FILE)
    files = {
        "model" if cfg.peft.method == "none" else "adapter": ", ".join(
            n for n in saved if not _is_tokenizer_file(n)
        ),
        "tokenizer": ", ".join(n for n in saved if _is_tokenizer_file(n)),
        "config": CONFIG_FILE,
    }
    files["metrics"] = "metrics.jsonl"
    if metrics.tensorboard_dir is not None:
        files["tensorboard"] = f"tensorboard/  (tensorboard --logdir {metrics.tensorboard_dir})"
    if cfg.logging.plot:
        files["plot"] = ", ".join(path.name for path in plot_run(metrics.path, output_dir))
    files["log"] = "train.log"
    files["summary"] = "summary.json"
    latest = latest_checkpoint(output_dir)
    if latest is not None:
        files["checkpoints"] = f"checkpoints/  (latest {latest.name}; continue with --resume auto)"
    files["base model"] = source.ref

    # The sample's prompt in the training format (alpaca's template, the chat template, ...).
    prompt = cfg.generation.prompt or data.format.example_prompt
    sample = _sample(model, tokenizer, _sample_input(cfg, data, prompt), cfg, env, compute_dtype)
    result = RunResult(
        output_dir, summary, source.ref, precision, str(env.device), prompt, sample, files, model, tokenizer
    )
    result.notes = memory_lines
    (output_dir / "summary.json").write_text(
        json.dumps(
            {
                "steps": summary.steps,
                "first_loss": finite_or_none(summary.losses[0]) if summary.losses else None,
                "final_loss": finite_or_none(summary.losses[-1]) if summary.losses else None,
                "eval_loss": summary.eval_loss,
                **{
                    k: v
                    for k, v in summary.eval_metrics.items()
                    if k.startswith("eval_") and k != "eval_loss"
                },
                "train_time_s": summary.train_time_s,
                "tokens_per_s": summary.tokens_per_s,
                "base_model": source.ref,
                "device": str(env.device),
                "precision": precision,
                "sample": {"prompt": prompt, "completion": sample},
                "throughput": throughput,
                "memory": memory,
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
    return result


def _sample_input(cfg: Config, data, prompt: str) -> str:
    """The sample's input: the prompt in the training format (alpaca's template, the chat template,
    ...), or the bare text a classifier reads."""
    return prompt if cfg.task == "classification" else data.format.generation_prompt(prompt)


def _sample(model, tokenizer, prompt: str, cfg: Config, env: DistEnv, compute_dtype) -> str:
    if cfg.task == "classification":  # the predicted class of the example text (one forward, all ranks)
        label, probability = classify(unwrap(model), tokenizer, [prompt], env.device, compute_dtype)[0]
        return f" -> {label} (p={probability:.2f})"
    return _generate(model, tokenizer, prompt, cfg, env, compute_dtype)


def _generate(model, tokenizer, prompt: str, cfg: Config, env: DistEnv, compute_dtype) -> str:
    """The closing sample. A sharded model's forward is collective, so under FSDP every rank generates
    (same prompt, same seed, so the same tokens) with ``synced_gpus``: a rank that reaches EOS keeps
    taking part in the others' forwards until all are done."""
    return generate_text(
        unwrap(model),
        tokenizer,
        prompt,
        cfg.generation,
        env.device,
        compute_dtype,
        cfg.train.seed,
        synced_gpus=env.strategy == "fsdp" and env.world_size > 1,
    )


def _other_rank_result(model, tokenizer, cfg: Config, env: DistEnv, compute_dtype, data, output_dir, summary):
    """Ranks other than 0 write nothing; under FSDP they still take part in the closing sample."""
    prompt = cfg.generation.prompt or data.format.example_prompt
    text = _sample_input(cfg, data, prompt)
    sample = _sample(model, tokenizer, text, cfg, env, compute_dtype) if env.strategy == "fsdp" else ""
    return RunResult(
        output_dir, summary, "", "", str(env.device), prompt, sample, {}, model, tokenizer, is_main=False
    )
