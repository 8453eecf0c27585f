"""One benchmark run of one tool, in a process of its own: ``python -m benchmarks.tools SPEC.json``.

The harness starts this module once per (tool, method), so every tool's peak host memory is its own
process's high-water mark (``ru_maxrss``) and no tool inherits another's caches or threads. The spec
(written by the harness) names the tool, the method, the model folder, the data and the
hyperparameters; the result JSON gets the tool's own training time and losses; scoring and ratios
are the harness's job.

Tools:
    llmft       ``llmft finetune`` (its Python entry point) with packing and its automatic precision.
    hf          transformers ``Trainer`` + PEFT, random sampling, padded batches.
    hf_grouped  the same with ``train_sampling_strategy="group_by_length"`` (HF's length grouping).
    trl         TRL ``SFTTrainer`` with its packing (best-fit decreasing, padding-free rows).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

TOOLS = ("llmft", "hf", "hf_grouped", "trl")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def rss_mib() -> float:
    """This process's peak resident set so far, MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _last_window(losses: list[float]) -> float | None:
    """Mean of the last tenth of the step losses (at least one): the tool's own final train loss."""
    finite = [x for x in losses if x == x]
    if not finite:
        return None
    tail = finite[-max(1, len(finite) // 10) :]
    return sum(tail) / len(tail)


def run_llmft(spec: dict[str, Any]) -> dict[str, Any]:
    from llmft.config import load_config
    from llmft.finetune import finetune

    hp, out = spec["hp"], Path(spec["output_dir"])
    overrides = {
        "model.name": spec["model_dir"],
        "data.format": "alpaca",
        "data.path": spec["train_jsonl"],
        "data.prompt_template": spec["prompt_template"],
        "data.val_set_size": 0,
        "data.max_seq_len": hp["max_seq_len"],
        "data.batching": "packing",
        "peft.method": "lora" if spec["method"] == "lora" else "none",
        "train.epochs": 1,
        "train.micro_batch_size": hp["packed_rows"],
        "train.batch_size": hp["packed_rows"],
        "train.lr": hp["lr"],
        "train.lr_scheduler": "cosine",
        "train.warmup_ratio": hp["warmup_ratio"],
        "train.weight_decay": 0.0,
        "train.max_grad_norm": 1.0,
        "train.precision": hp["llmft_precision"],
        "train.seed": hp["seed"],
        "train.eval_every": 0,
        "train.progress": False,
        "logging.tensorboard": False,
        "logging.plot": False,
        "generation.max_new_tokens": 1,
        "output_dir": str(out),
    }
    if spec["method"] == "lora":
        overrides |= {
            "peft.lora.r": hp["lora_r"],
            "peft.lora.alpha": hp["lora_alpha"],
            "peft.lora.dropout": hp["lora_dropout"],
            "peft.lora.target_modules": LORA_TARGETS,
        }
    if spec.get("max_steps"):
        overrides["train.max_steps"] = spec["max_steps"]
    cfg = load_config(None, overrides)
    baseline = rss_mib()
    result = finetune(cfg, overwrite=True)
    summary = json.loads((out / "summary.json").read_text())
    return {
        "train_s": result.summary.train_time_s,
        "steps": result.summary.steps,
        "losses": result.summary.losses,
        "tool_real_tokens": result.summary.real_tokens,
        "precision": summary["precision"],
        "baseline_rss_mib": baseline,
        "memory_estimate_bytes": summary["memory"]["estimate"]["per_rank_bytes"]["total"],
        "settings": "packing (best-fit decreasing, 512-token rows, no cross-document attention), "
        f"precision {summary['precision']}, fused AdamW",
    }


def _hf_dataset(spec: dict[str, Any]):
    from datasets import Dataset

    tokens = json.loads(Path(spec["train_tokens"]).read_text())
    return Dataset.from_dict(
        {
            "input_ids": tokens["input_ids"],
            "labels": tokens["labels"],
            "attention_mask": [[1] * len(ids) for ids in tokens["input_ids"]],
        }
    )


def _lora_config(hp: dict[str, Any]):
    from peft import LoraConfig

    return LoraConfig(
        r=hp["lora_r"],
        lora_alpha=hp["lora_alpha"],
        lora_dropout=hp["lora_dropout"],
        target_modules=LORA_TARGETS,
        task_type="CAUSAL_LM",
    )


def _common_args(spec: dict[str, Any], batch: int) -> dict[str, Any]:
    """TrainingArguments shared by the HF and TRL runs: the same schedule and optimizer as llmft."""
    hp = spec["hp"]
    args = dict(
        output_dir=str(Path(spec["output_dir"]) / "trainer"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_train_epochs=1,
        learning_rate=hp["lr"],
        lr_scheduler_type="cosine",
        warmup_steps=hp["warmup_ratio"],  # transformers 5: a float in [0, 1) is a ratio of all steps
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch_fused",
        bf16=hp["peer_bf16"],
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=hp["seed"],
    )
    if spec.get("max_steps"):
        args["max_steps"] = spec["max_steps"]
    return args


def grouping_args() -> dict[str, Any]:
    """HF's length grouping: ``train_sampling_strategy`` in newer transformers 5, else ``group_by_length``."""
    from transformers import TrainingArguments

    if "train_sampling_strategy" in TrainingArguments.__dataclass_fields__:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def _losses(trainer) -> list[float]:
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


def _hf_model(spec: dict[str, Any]):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)


def _train_and_report(trainer, spec: dict[str, Any], settings: str) -> dict[str, Any]:
    """Train an HF-style trainer (Trainer or SFTTrainer), save its model, and report what the harness
    compares: train time, steps, logged losses, precision, the RSS before training and the settings."""
    baseline = rss_mib()
    output = trainer.train()
    trainer.save_model(spec["output_dir"])
    return {
        "train_s": output.metrics["train_runtime"],
        "steps": trainer.state.global_step,
        "losses": _losses(trainer),
        "precision": "bf16" if spec["hp"]["peer_bf16"] else "fp32",
        "baseline_rss_mib": baseline,
        "settings": settings,
    }


def run_hf(spec: dict[str, Any], grouped: bool) -> dict[str, Any]:
    from peft import get_peft_model
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    hp = spec["hp"]
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    dataset = _hf_dataset(spec)
    model = _hf_model(spec)
    if spec["method"] == "lora":
        model = get_peft_model(model, _lora_config(hp))
    args = _common_args(spec, hp["seq_batch"])
    if grouped:
        args |= grouping_args()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**args),
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
    )
    sampling = "length-grouped (train_sampling_strategy=group_by_length)" if grouped else "random sampling"
    return _train_and_report(
        trainer,
        spec,
        f"{sampling}, padded batches of {hp['seq_batch']} sequences (DataCollatorForSeq2Seq), "
        f"bf16={hp['peer_bf16']} (autocast), optim adamw_torch_fused",
    )


def run_trl(spec: dict[str, Any]) -> dict[str, Any]:
    from trl import SFTConfig, SFTTrainer

    hp = spec["hp"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    args = _common_args(spec, hp["packed_rows"])
    config = SFTConfig(
        **args,
        packing=True,
        packing_strategy="bfd",
        max_length=hp["max_seq_len"],
        dataset_num_proc=None,
        gradient_checkpointing=False,  # TRL turns it on by default; off is faster, and memory is no issue here
    )
    dataset = _hf_dataset(spec).remove_columns("attention_mask")
    trainer = SFTTrainer(
        model=_hf_model(spec),
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=_lora_config(hp) if spec["method"] == "lora" else None,
    )
    return _train_and_report(
        trainer,
        spec,
        f"packing=True, packing_strategy=bfd (padding-free rows of up to {hp['max_seq_len']} "
        f"tokens), {hp['packed_rows']} rows per step, bf16={hp['peer_bf16']}, optim adamw_torch_fused",
    )


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    started = time.perf_counter()
    tool = spec["tool"]
    if tool == "llmft":
        result = run_llmft(spec)
    elif tool in ("hf", "hf_grouped"):
        result = run_hf(spec, grouped=tool == "hf_grouped")
    elif tool == "trl":
        result = run_trl(spec)
    else:
        raise SystemExit(f"unknown tool {tool!r}; known: {', '.join(TOOLS)}")
    result["train_loss_last"] = _last_window(result["losses"])
    result["peak_rss_mib"] = rss_mib()
    result["process_s"] = time.perf_counter() - started  # load, data preparation, train, save
    Path(spec["result_path"]).write_text(json.dumps(result) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
