"""Packing without cross-talk: each document's logits inside a packed row equal its logits alone."""

from __future__ import annotations

import pytest
import torch

from llmft.config import DataSection
from llmft.data.batching import Collator
from llmft.data.pipeline import prepare_data
from llmft.train.evaluate import model_inputs
from llmft.train.loss import token_loss_sum


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_documents_match_documents_alone(tiny_model_dir, tiny_tokenizer, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, attn_implementation=attn, dtype=torch.float32
    )
    model.eval()
    cfg = DataSection(format="alpaca", batching="packing", max_seq_len=512, max_samples=24, val_set_size=0)
    bundle = prepare_data(cfg, tiny_tokenizer, seed=0)
    rows = bundle.train.examples
    assert any(r.position_ids.count(0) >= 3 for r in rows)  # rows really hold several documents
    collate = Collator(tiny_tokenizer.pad_token_id, pad_to=cfg.max_seq_len)
    batch = collate([bundle.train[i] for i in range(len(rows))])
    with torch.no_grad():
        packed_BTV = model(**model_inputs(batch), use_cache=False).logits
        packed_loss = token_loss_sum(packed_BTV, batch["labels"])

    alone_loss = torch.zeros(())
    checked = 0
    for row, example in enumerate(rows):
        starts = [i for i, p in enumerate(example.position_ids) if p == 0]
        for begin, end in zip(starts, [*starts[1:], len(example.input_ids)]):
            ids = torch.tensor([example.input_ids[begin:end]])
            with torch.no_grad():
                alone_BTV = model(input_ids=ids, use_cache=False).logits
            torch.testing.assert_close(packed_BTV[row, begin:end], alone_BTV[0], atol=2e-5, rtol=1e-5)
            labels = torch.tensor([example.labels[begin:end]])
            alone_loss += token_loss_sum(alone_BTV, labels)
            checked += 1
    assert checked == bundle.stats.examples == 24
    # Every target of every document is trained exactly as it would be alone.
    torch.testing.assert_close(packed_loss, alone_loss, atol=1e-3, rtol=1e-6)


def test_packing_trains_the_same_tokens_as_padding(tiny_tokenizer):
    padded = prepare_data(
        DataSection(format="alpaca", val_set_size=0, max_samples=40), tiny_tokenizer, seed=0
    )
    packed = prepare_data(
        DataSection(format="alpaca", val_set_size=0, max_samples=40, batching="packing"),
        tiny_tokenizer,
        seed=0,
    )
    targets = lambda ds: sorted(t for e in ds.examples for t in e.labels if t != -100)  # noqa: E731
    assert targets(packed.train) == targets(padded.train)  # BOS starts each document: its -100 is unchanged
    assert packed.stats.packed_rows == len(packed.train) < len(padded.train)
