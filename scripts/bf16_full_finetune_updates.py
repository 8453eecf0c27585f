"""Why full fine-tuning refuses a bf16 base: count the weights that 5 AdamW steps at lr 2e-5 change.

    python scripts/bf16_full_finetune_updates.py

Measured on the project machine (2026-11-28): bf16 storage 10.7% of the weights changed, fp32 90.0%.
"""

import torch
from transformers import set_seed

from llmft.config import DataSection, ModelSection, PeftSection, TrainSection
from llmft.data.pipeline import prepare_data
from llmft.distributed.env import DistEnv
from llmft.models.loader import load_causal_lm, load_tokenizer, resolve_model
from llmft.peft.methods import apply_method
from llmft.train.trainer import Trainer

env = DistEnv(0, 1, 0, torch.device("cpu"))
for dtype in ("bfloat16", "float32"):
    cfg = ModelSection(dtype=dtype)
    src = resolve_model(cfg)
    tok = load_tokenizer(src, cfg)
    data = prepare_data(DataSection(max_samples=64, val_set_size=0), tok, 0)
    set_seed(0)
    model = apply_method(load_causal_lm(src, cfg, env.device), PeftSection(method="none"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    t = Trainer(
        model,
        TrainSection(max_steps=5, lr=2e-5, warmup_steps=0, progress=False, precision="bf16"),
        data.train,
        None,
        tok.pad_token_id,
        env,
    )
    t.fit()
    changed = sum(int((p != before[n]).sum()) for n, p in model.named_parameters())
    total = sum(p.numel() for p in model.parameters())
    print(f"{dtype}: {changed:,} of {total:,} weights changed ({100 * changed / total:.1f}%)")
