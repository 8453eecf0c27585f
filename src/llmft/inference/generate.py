"""Text generation with a trained model, in the prompt format of its training data."""

from __future__ import annotations

import torch
from torch import nn

from llmft.config import GenerationSection


@torch.no_grad()
def generate_text(
    model: nn.Module,
    tokenizer,
    prompt: str,
    cfg: GenerationSection,
    device: torch.device,
    compute_dtype: torch.dtype | None = None,
    seed: int = 0,
    synced_gpus: bool = False,
) -> str:
    """The completion of ``prompt`` (new text only), greedy unless ``cfg.do_sample``.

    ``synced_gpus``: every process of a sharded (FSDP) model calls this, and each keeps running forward
    passes until all have finished, since each forward gathers weights from all of them.
    """
    was_training = model.training
    model.eval()
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    sampling = dict(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p) if cfg.do_sample else {}
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # sampling is reproducible, and training's RNG stream is left untouched
    try:
        with torch.autocast(
            device.type, dtype=compute_dtype or torch.float32, enabled=compute_dtype is not None
        ):
            output = model.generate(
                **inputs,
                max_new_tokens=cfg.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                synced_gpus=synced_gpus,
                **({"do_sample": False} | sampling),
            )
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return tokenizer.decode(new_tokens, skip_special_tokens=True)
