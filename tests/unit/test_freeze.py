"""Freeze strategies: what is meant to be frozen stays bit-identical, the rest trains; optimizer state
only for trainable parameters; parameter groups; bad settings fail before training."""

from __future__ import annotations

import pytest
import torch
from test_trainer import _examples, _trainer  # the trainer tests' model-free example builders

from llmft.config import FreezeSection, ModelSection, PeftSection, build_config
from llmft.errors import UserError
from llmft.models.loader import load_causal_lm, model_skeleton, resolve_model
from llmft.peft.freeze import apply_freeze, check_freeze, describe_groups, parameter_groups
from llmft.peft.methods import apply_method

LAYERS = 4  # tiny-llama


def _full_model():
    model = load_causal_lm(resolve_model(ModelSection()), ModelSection(), torch.device("cpu"))
    return apply_method(model, PeftSection(method="none"))


def _block(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


def _expect_bottom(frozen: int, norms: bool = False, embeddings: bool = False):
    def trains(name: str) -> bool:
        if "embed_tokens" in name:
            return embeddings
        block = _block(name)
        if block is not None and block < frozen:
            return norms and "norm" in name
        return True

    return trains


STRATEGIES = {
    "none": (dict(strategy="none"), lambda n: True),
    "bottom-frozen-3": (dict(strategy="bottom", num_frozen_layers=3), _expect_bottom(3)),
    "bottom-trainable-1": (dict(strategy="bottom", num_trainable_layers=1), _expect_bottom(3)),
    "bottom-with-norms-and-embeddings": (
        dict(strategy="bottom", num_frozen_layers=2, train_norms=True, train_embeddings=True),
        _expect_bottom(2, norms=True, embeddings=True),
    ),
    "patterns": (
        dict(strategy="patterns", include=[r"layers\.3\.", "lm_head"], exclude=[r"\.mlp\."]),
        lambda n: ("layers.3." in n and ".mlp." not in n) or "lm_head" in n,
    ),
    "head_only": (dict(strategy="head_only"), lambda n: n.startswith("lm_head")),
}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_frozen_stay_bit_identical_and_the_rest_train(name):
    settings, expected = STRATEGIES[name]
    model = apply_freeze(_full_model(), FreezeSection(**settings))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in before if expected(n)}
    assert sum(p.numel() for n, p in model.named_parameters() if n in trainable) == sum(
        before[n].numel() for n in before if expected(n)
    )
    trainer = _trainer(model, _examples(8), max_steps=2, micro_batch_size=4, batch_size=4, lr=1e-2)
    trainer.fit()
    for n, p in model.named_parameters():
        if n in trainable:
            assert not torch.equal(p, before[n]), f"{n} should have trained"
        else:
            assert torch.equal(p, before[n]), f"{n} should be frozen"
    # Optimizer states exist for exactly the trainable parameters.
    state_ids = {id(p) for p in trainer.optimizer.state}
    assert state_ids == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(len(trainer.optimizer.state[p]) > 0 for p in trainer.optimizer.state)


def test_parameter_groups_are_found_from_the_model():
    model = apply_freeze(_full_model(), FreezeSection(strategy="bottom", num_frozen_layers=2))
    groups = parameter_groups(model)
    assert groups["model.embed_tokens.weight"] == "embeddings"
    assert groups["model.layers.3.mlp.down_proj.weight"] == "block 3"
    assert groups["model.norm.weight"] == "norms" and groups["lm_head.weight"] == "head"
    table = describe_groups(model)
    assert table.splitlines()[0].split() == ["embeddings", "0", "of", "498,688", "trainable"]
    assert "block 1                  0 of" in table and "block 2            725,504 of       725,504" in table


def test_bad_freeze_settings_fail_before_training():
    skeleton = model_skeleton(resolve_model(ModelSection()), ModelSection())
    with pytest.raises(
        UserError, match="freeze.num_frozen_layers: 5 is more than the model's 4 decoder blocks"
    ):
        check_freeze(skeleton, FreezeSection(strategy="bottom", num_frozen_layers=5))
    with pytest.raises(UserError, match="freeze.num_trainable_layers: 9 is more than"):
        check_freeze(skeleton, FreezeSection(strategy="bottom", num_trainable_layers=9))
    with pytest.raises(
        UserError, match=r"freeze.exclude: .*attention.* matches no parameter name; names look like"
    ):
        check_freeze(
            skeleton, FreezeSection(strategy="patterns", include=["lm_head"], exclude=[r"attention\."])
        )
    for settings, message in [
        ({"freeze.strategy": "bottom"}, "needs exactly one of freeze.num_frozen_layers"),
        ({"freeze.strategy": "patterns"}, "needs freeze.include or freeze.exclude"),
        ({"freeze.num_frozen_layers": 2}, "add --freeze.strategy bottom"),
        ({"freeze.strategy": "patterns", "freeze.include": "(["}, "is not a regular expression"),
        ({"freeze.strategy": "head_only", "peft.method": "lora"}, "needs peft.method none"),
        ({"head.type": "mlp"}, "a causal LM has no such head"),
        # train_norms / train_embeddings act under bottom and head_only only; elsewhere they were ignored.
        (
            {"freeze.train_norms": True},
            r"train_embeddings apply to strategies bottom and head_only \(strategy is 'none'\)",
        ),
        (
            {"freeze.strategy": "patterns", "freeze.include": "lm_head", "freeze.train_embeddings": True},
            "strategy is 'patterns'.*add the norms or embeddings to freeze.include",
        ),
        ({"peft.method": "lora", "freeze.train_norms": True}, "apply to strategies bottom and head_only"),
        # head.* MLP settings with the linear head were ignored.
        ({"head.num_layers": 3}, r"head.num_layers applies to head.type mlp \(type is 'linear'\)"),
        ({"head.width": 64, "head.activation": "relu"}, "head.width / activation apply to head.type mlp"),
        ({"head.dropout": 0.0}, "head.dropout applies to head.type mlp.*leave it out"),
        ({"task": "classification"}, "task classification reads text and label records"),
        (
            {"task": "classification", "data.format": "classification", "data.batching": "packing"},
            "use data.batching padding",
        ),
    ]:
        overrides = {"peft.method": "none", **settings}
        with pytest.raises(UserError, match=message):
            build_config({}, overrides)


def test_a_tied_head_needs_trainable_embeddings():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=64, tie_word_embeddings=True)  # fmt: skip
    model = LlamaForCausalLM(config)
    with pytest.raises(UserError, match="tied.*add --freeze.train_embeddings true"):
        check_freeze(model, FreezeSection(strategy="head_only"))
    apply_freeze(model, FreezeSection(strategy="head_only", train_embeddings=True))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["model.embed_tokens.weight"]


def _classifier_skeleton(head: dict | None = None):
    from llmft.config import HeadSection
    from llmft.models.heads import ClassifierSpec, attach_head

    spec = ClassifierSpec(("a", "b", "c"), HeadSection(**(head or {})), 0)
    return attach_head(model_skeleton(resolve_model(ModelSection()), ModelSection(), spec), spec)


def test_patterns_that_train_nothing_or_freeze_a_new_head_fail_on_the_skeleton():
    lm = model_skeleton(resolve_model(ModelSection()), ModelSection())
    with pytest.raises(
        UserError, match=r"freeze.include \['lm_head'\] / freeze.exclude \['head'\] leave no parameter"
    ):
        check_freeze(lm, FreezeSection(strategy="patterns", include=["lm_head"], exclude=["head"]))
    # A classifier's score layer is new and random: freezing all of it is refused, with the fix.
    for head in ({}, {"type": "mlp"}):
        with pytest.raises(
            UserError,
            match=r"freeze the classifier's new, randomly initialised head \(score.*add 'score' to freeze.include",
        ):
            check_freeze(
                _classifier_skeleton(head), FreezeSection(strategy="patterns", include=[r"layers\.3\."])
            )
    check_freeze(
        _classifier_skeleton(), FreezeSection(strategy="patterns", include=[r"layers\.3\.", "score"])
    )
    # An LM head is pretrained: freezing it is fine.
    check_freeze(lm, FreezeSection(strategy="patterns", include=[r"layers\.3\."]))


def test_a_pattern_on_the_mlp_head_is_checked_against_the_mlp_names():
    skeleton = _classifier_skeleton({"type": "mlp"})
    check_freeze(skeleton, FreezeSection(strategy="patterns", include=[r"score\.4\.", r"layers\.3\."]))
    with pytest.raises(
        UserError, match=r"'score\\\\.2\\\\.' matches no parameter name.*the head's are \['score.1.weight'"
    ):
        check_freeze(skeleton, FreezeSection(strategy="patterns", include=[r"score\.2\."]))


def test_a_lora_classifier_counts_its_trainable_head_copy_under_head():
    from llmft.config import HeadSection
    from llmft.models.heads import ClassifierSpec, attach_head

    spec = ClassifierSpec(("a", "b", "c"), HeadSection(), 0)
    model = load_causal_lm(resolve_model(ModelSection()), ModelSection(), torch.device("cpu"), spec)
    model = apply_method(attach_head(model, spec), PeftSection(method="lora"), "classification")
    groups = parameter_groups(model)
    copies = [n for n in groups if "modules_to_save" in n]
    assert copies and all(groups[n] == "head" for n in copies)
    assert all(groups[n] == "adapters" for n in groups if "lora_" in n)
    head = {line.split()[0]: line.split()[1:] for line in describe_groups(model).splitlines()}["head"]
    # The trainable copy (256 x 3) trains; PEFT's original score layer beside it stays frozen.
    assert head == ["768", "of", "1,536", "trainable"]
