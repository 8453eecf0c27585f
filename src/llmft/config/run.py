"""How a run proceeds and what it reports: the optimisation (``train``), the process layout
(``distributed``), step checkpoints, the end-of-run sample (``generation``), evaluation and logging."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmft.config.base import Float, Int, Section


class TrainSection(Section):
    """The optimisation: batch sizes, schedule, precision, evaluation cadence."""

    epochs: Int = Field(3, ge=1, description="Passes over the training split (unless max_steps stops first).")
    max_steps: Int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps; overrides epochs when set."
    )
    micro_batch_size: Int = Field(4, ge=1, description="Sequences per forward/backward pass per process.")
    batch_size: Int = Field(
        8,
        ge=1,
        description="Global batch (sequences per optimizer step over all processes); "
        "gradient accumulation = batch_size / (micro_batch_size x world size).",
    )
    lr: Float = Field(
        3e-4, gt=0, description="Peak learning rate (3e-4 suits LoRA; full fine-tuning wants about 2e-5)."
    )
    weight_decay: Float = Field(0.0, ge=0, description="AdamW decoupled weight decay (matrices only).")
    adam_beta1: Float = Field(0.9, ge=0, lt=1)
    adam_beta2: Float = Field(0.999, ge=0, lt=1)
    adam_eps: Float = Field(1e-8, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_steps: Int | None = Field(
        None, ge=0, description="Linear warmup steps; overrides warmup_ratio; at most the run's length."
    )
    warmup_ratio: Float = Field(0.05, ge=0, le=1, description="Warmup as a share of all steps.")
    min_lr_ratio: Float = Field(0.0, ge=0, le=1, description="Cosine/linear decay floor, as a share of lr.")
    max_grad_norm: Float | None = Field(
        1.0, gt=0, description="Clip the global gradient norm; null: no clip."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Autocast compute dtype. auto: bf16 where the device computes it fast "
        "(CUDA with bf16, CPUs with AVX512-BF16 or AMX), else fp32.",
    )
    seed: Int = Field(
        42, ge=0, lt=2**32, description="Seeds data order, dropout and every random choice (0 to 2**32-1)."
    )
    eval_every: Int = Field(
        50, ge=0, description="Evaluate every N steps (and at the end); 0: only at the end."
    )
    log_every: Int = Field(1, ge=1, description="Write a metrics row every N steps.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward.")
    progress: bool = Field(True, description="Draw a live progress bar.")


class FsdpSection(Section):
    """FSDP2 options (``distributed.strategy: fsdp``); see docs/distributed.md."""

    param_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None,
        description="Dtype parameters are all-gathered and computed in (gradients are reduced in "
        "float32); null: their storage dtype. float16 is refused (no loss scaling): use bfloat16.",
    )
    reshard_after_forward: bool = Field(
        True,
        description="Free gathered parameters after forward (full shard); false keeps them until "
        "backward (shard-grad-op: less communication, more memory).",
    )
    cpu_offload: bool = Field(
        False, description="Keep sharded parameters, gradients and optimizer state on CPU."
    )
    hsdp_replicate: Int = Field(
        1,
        ge=1,
        description="HSDP: replica groups (usually the number of nodes); each shards over "
        "world size / hsdp_replicate processes. 1: plain FSDP over all processes.",
    )


class DistributedSection(Section):
    """Process layout: one process, or data parallel over torchrun's processes (DDP or FSDP2)."""

    strategy: Literal["single", "ddp", "fsdp"] = Field(
        "single",
        description="single: one process; ddp: replicate the model in every process (launch with "
        "torchrun); fsdp: shard it over the processes (FSDP2; launch with torchrun).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU.")
    fsdp: FsdpSection = Field(default_factory=FsdpSection)


class CheckpointSection(Section):
    """Resumable training state written during the run (see docs/checkpoints.md)."""

    every_steps: Int = Field(
        100, ge=0, description="Save the whole training state every N optimizer steps; 0: not on an interval."
    )
    at_epoch_end: bool = Field(True, description="Also save at the end of each epoch.")
    keep: Int = Field(
        2,
        ge=1,
        description="Keep the last K checkpoints; an older one is deleted once a newer one is complete.",
    )


class GenerationSection(Section):
    """The sample generated at the end of a run."""

    prompt: str | None = Field(None, description="Prompt; empty means the data format's own example.")
    max_new_tokens: Int = Field(48, ge=1)
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: Float = Field(0.8, gt=0)
    top_p: Float = Field(0.95, gt=0, le=1)


class EvalSection(Section):
    """Generation-based evaluation during training (every train.eval_every steps and at the end)."""

    task_metrics: bool = Field(
        True,
        description="Generate greedy answers to validation prompts and score them (grammar: exact match, "
        "GLEU; alpaca, chat: ROUGE-L; classification as text: exact match); plain-text formats have none.",
    )
    max_generations: Int = Field(
        8, ge=0, description="Validation prompts answered per evaluation (the first N, in file order)."
    )
    log_samples: Int = Field(
        3,
        ge=0,
        description="Of those, how many (prompt, completion, reference) go to metrics and TensorBoard.",
    )
    max_new_tokens: Int = Field(48, ge=1, description="Tokens generated per answer at most.")


class LoggingSection(Section):
    """Where metrics go besides metrics.jsonl."""

    tensorboard: bool = True
    plot: bool = True
    wandb: bool = Field(
        False,
        description="Also log to Weights & Biases (pip install wandb; WANDB_MODE=offline needs no network).",
    )
    wandb_project: str = Field("llmft", min_length=1, description="W&B project of the run.")
    peak_tflops: Float | None = Field(
        None, gt=0, description="Peak dense TFLOP/s per device for MFU; empty: the GPU's datasheet figure."
    )
    measure_cpu_peak: bool = Field(
        False, description="On CPU, measure a matmul peak once at the start, for MFU (about a second)."
    )
