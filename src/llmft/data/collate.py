"""Batching: pad a list of tokenized examples to the longest one."""

from __future__ import annotations

import torch

from llmft.data.tokenize import IGNORE_INDEX


class PadCollator:
    """Right-pads input ids with ``pad_id`` and labels with IGNORE_INDEX; builds the attention mask.

    Padding positions never count as targets: the label mask, not the pad id, decides, so a tokenizer
    whose pad token is its EOS still trains on real EOS tokens.
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
