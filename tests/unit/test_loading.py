"""The checks of the FSDP load (llmft.distributed.loading) on their failing paths: a checkpoint whose
names differ from the sharded model's, untied embeddings, tensors left on the meta device. The happy
path runs for real in tests/distributed (rank 0 loads, every rank receives its shards)."""

from __future__ import annotations

import torch
from torch import nn

from llmft.config import ModelSection
from llmft.distributed.loading import _key_problem, _left_on_meta
from llmft.models.loader import load_causal_lm, resolve_model


def _tiny() -> nn.Module:
    return load_causal_lm(resolve_model(ModelSection()), ModelSection(), torch.device("cpu"))


def test_the_same_model_has_no_key_problem(tiny_model_dir):
    assert _key_problem(_tiny(), _tiny()) is None


def test_an_extra_or_missing_weight_or_buffer_is_named(tiny_model_dir):
    model, checkpoint = _tiny(), _tiny()
    checkpoint.model.layers[0].mlp.register_parameter("extra", nn.Parameter(torch.zeros(2)))
    assert _key_problem(model, checkpoint) == (
        "1 unexpected weights in the checkpoint (e.g. model.layers.0.mlp.extra)"
    )
    # The other way round: the sharded model has a weight (and a buffer) the checkpoint lacks.
    model.lm_head.register_parameter("bias", nn.Parameter(torch.zeros(model.config.vocab_size)))
    model.model.register_buffer("scale", torch.ones(1))
    problem = _key_problem(model, checkpoint)
    assert problem == (
        "2 weights missing from the checkpoint (e.g. lm_head.bias); "
        "1 unexpected weights in the checkpoint (e.g. model.layers.0.mlp.extra); "
        "1 buffers missing from the checkpoint (e.g. model.scale)"
    )


def test_embeddings_tied_in_the_checkpoint_but_not_in_the_sharded_model_are_refused(tiny_model_dir):
    model, checkpoint = _tiny(), _tiny()
    assert model.lm_head.weight is not model.model.embed_tokens.weight  # the tiny preset is untied
    assert _key_problem(model, checkpoint) is None
    checkpoint.lm_head.weight = checkpoint.model.embed_tokens.weight  # tie: same names, one tensor
    assert _key_problem(model, checkpoint) == (
        "the input and output embeddings are tied in the checkpoint but not when sharded"
    )
    model.lm_head.weight = model.model.embed_tokens.weight
    assert _key_problem(model, checkpoint) is None


def test_tensors_left_on_meta_are_found():
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    assert _left_on_meta(model) == []
    model[1].weight = nn.Parameter(torch.empty(2, device="meta"))
    model[0].register_buffer("mask", torch.empty(2, device="meta"))
    assert _left_on_meta(model) == ["1.weight", "0.mask"]
