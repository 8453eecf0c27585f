"""Pieces of the parallelize step that need no process group: finding blocks, clipping, byte counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmft.config import ModelSection, PeftSection
from llmft.distributed.parallelize import clip_grad_norm_, local_bytes
from llmft.errors import UserError
from llmft.models.loader import model_skeleton, resolve_model
from llmft.models.structure import decoder_blocks, hf_model
from llmft.peft.methods import apply_method


def test_decoder_blocks_come_from_the_model_with_or_without_peft(tiny_model_dir):
    skeleton = model_skeleton(resolve_model(ModelSection()), ModelSection())
    blocks = decoder_blocks(skeleton)
    assert [type(b).__name__ for b in blocks] == ["LlamaDecoderLayer"] * 4
    peft_model = apply_method(skeleton, PeftSection())
    assert decoder_blocks(peft_model) == blocks  # found inside the PeftModel
    assert hf_model(peft_model) is skeleton


def test_blocks_without_no_split_modules_are_the_longest_module_list():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList([nn.Linear(2, 2)])
            self.layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])

    model = Tiny()
    assert decoder_blocks(model) == list(model.layers)
    with pytest.raises(UserError, match="found no decoder blocks in Linear"):
        decoder_blocks(nn.Linear(2, 2))


def test_clipping_equals_torch_for_plain_tensors():
    torch.manual_seed(0)
    ours, theirs = (nn.Linear(8, 8), nn.Linear(8, 8))
    theirs.load_state_dict(ours.state_dict())
    inputs = torch.randn(4, 8)
    for model in (ours, theirs):
        model(inputs).pow(2).sum().backward()
    norm = clip_grad_norm_(list(ours.parameters()), 0.5)
    expected = torch.nn.utils.clip_grad_norm_(list(theirs.parameters()), 0.5)
    assert isinstance(norm, float) and norm == float(expected) and norm > 0.5
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)


def test_local_bytes_of_plain_tensors():
    assert local_bytes([torch.zeros(3, 4), torch.zeros(2, dtype=torch.bfloat16)]) == 3 * 4 * 4 + 2 * 2
