"""Text generation with a trained model, in the prompt format of its training data."""

from __future__ import annotations

import torch
from torch import nn

from llmft.config import GenerationSection
from llmft.precision import autocast


@torch.no_grad()
def generate_completions(
    model: nn.Module,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int,
    device: torch.device,
    compute_dtype: torch.dtype | None = None,
    do_sample: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    num_return_sequences: int = 1,
    seed: int = 0,
    synced_gpus: bool = False,
) -> list[str]:
    """The completions of ``prompt`` (new text only, special tokens dropped), greedy unless ``do_sample``.

    Sampling options left None keep the model's generation config. The seed makes sampling reproducible
    and the caller's RNG stream is restored afterwards, so a generation in the middle of training does
    not change what training draws next.

    ``synced_gpus``: every process of a sharded (FSDP) model calls this, and each keeps running forward
    passes until all have finished, since each forward gathers weights from all of them.
    """
    was_training = model.training
    model.eval()
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    options: dict = {"do_sample": do_sample}
    if do_sample:
        given = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
        options |= {k: v for k, v in given.items() if v is not None}
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with autocast(device, compute_dtype):
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                synced_gpus=synced_gpus,
                num_return_sequences=num_return_sequences,
                **options,
            )
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    start = inputs["input_ids"].shape[1]
    return [tokenizer.decode(row[start:], skip_special_tokens=True) for row in output]


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
    """The completion of ``prompt`` with the run's ``generation`` settings (see
    :func:`generate_completions`)."""
    return generate_completions(
        model,
        tokenizer,
        prompt,
        max_new_tokens=cfg.max_new_tokens,
        device=device,
        compute_dtype=compute_dtype,
        do_sample=cfg.do_sample,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=seed,
        synced_gpus=synced_gpus,
    )[0]
