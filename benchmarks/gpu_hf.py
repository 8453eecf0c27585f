"""HF Trainer + PEFT LoRA on the GPU benchmark's model and records (run by :mod:`benchmarks.gpu_bench`).

Its best plain setting: padded batches grouped by length (``train_sampling_strategy=
"group_by_length"``), as many sequences per step as hold about the real tokens of llmft's packed rows,
bf16 autocast over a bf16 base, fused AdamW, SDPA attention. Real tokens and wall time are taken per
step (a callback; the collator counts each batch's non-padding tokens), and the first ``warmup`` steps
are left out, as for llmft. Prints one JSON line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def main(model_dir: str, data: str, rows: int, steps: int, warmup: int, work: str) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from benchmarks.tools import grouping_args
    from benchmarks.workload import tokenize_records

    tokens = tokenize_records(Path(data), Path(model_dir), max_seq_len=2048)
    mean_length = tokens.tokens / len(tokens.lengths)
    batch = max(1, round(rows * 2048 / mean_length))
    dataset = Dataset.from_dict({"input_ids": tokens.input_ids, "labels": tokens.labels,
                                 "attention_mask": [[1] * n for n in tokens.lengths]})  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    batch_tokens: list[int] = []

    def counting_collator(features):
        out = collate(features)
        batch_tokens.append(int(out["attention_mask"].sum()))
        return out

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            now = time.perf_counter()
            self.times.append(now - self.last)
            self.last = now

    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))  # fmt: skip
    clock = StepClock()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(Path(work) / "hf-trainer"), per_device_train_batch_size=batch, max_steps=steps,
            learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.05, bf16=True, use_cpu=not cuda,
            optim="adamw_torch_fused", **grouping_args(), logging_steps=1,
            save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        ),
        train_dataset=dataset,
        data_collator=counting_collator,
        callbacks=[clock],
    )  # fmt: skip
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    clock.last = time.perf_counter()
    trainer.train()
    timed = list(range(warmup, len(clock.times))) or list(range(len(clock.times)))
    rate = sum(batch_tokens[i] for i in timed) / sum(clock.times[i] for i in timed)
    import resource

    result = {
        "sequences_per_step": batch,
        "steps_timed": len(timed),
        "tokens_per_s": rate,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "final_loss": next((r["loss"] for r in reversed(trainer.state.log_history) if "loss" in r), None),
    }
    print(json.dumps(result))
