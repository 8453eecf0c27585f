"""The one trainer: token-weighted accumulation, schedule, frozen weights, optimizer state, eval."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import set_seed

from llmft.config import ModelSection, TrainSection, build_config
from llmft.data.batching import Collator
from llmft.data.pipeline import TokenizedDataset
from llmft.data.tokenize import IGNORE_INDEX, TokenizedExample
from llmft.distributed.env import DistEnv
from llmft.errors import UserError
from llmft.models.loader import load_causal_lm, resolve_model
from llmft.peft.methods import apply_method
from llmft.train.loss import count_targets, token_loss_sum
from llmft.train.optim import lr_factor
from llmft.train.trainer import Trainer, accumulation_steps

CPU_ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
PAD = 3


def _examples(n: int, seed: int = 0) -> list[TokenizedExample]:
    """Sequences of very different lengths, some with masked prompts, so micro-batches differ."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(n):
        length = int(torch.randint(5, 48, (1,), generator=g))
        ids = [1] + torch.randint(4, 1900, (length - 1,), generator=g).tolist()
        prompt = int(torch.randint(1, length // 2 + 1, (1,), generator=g)) if i % 3 == 0 else 1
        examples.append(TokenizedExample(ids, [IGNORE_INDEX] * prompt + ids[prompt:], False))
    return examples


def _model(method: str = "none", seed: int = 0):
    set_seed(seed)
    model = load_causal_lm(resolve_model(ModelSection()), ModelSection(), torch.device("cpu"))
    cfg = build_config({}, {"peft.method": method, "peft.lora.dropout": 0.0}).peft
    return apply_method(model, cfg)


def _trainer(model, examples, **train) -> Trainer:
    cfg = TrainSection(
        **{"progress": False, "max_grad_norm": None, "warmup_steps": 0, "precision": "fp32", **train}
    )
    return Trainer(model, cfg, TokenizedDataset(examples), None, PAD, CPU_ENV)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_token_loss_sum_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    labels = torch.tensor(
        [[IGNORE_INDEX, 4, 5, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9]]
    )
    # Position t predicts label t+1: targets are (0->4), (1->5), (1->7), (2->8), (3->9).
    expected = -sum(
        torch.log_softmax(logits[b, t], -1)[c]
        for b, t, c in [(0, 0, 4), (0, 1, 5), (1, 1, 7), (1, 2, 8), (1, 3, 9)]
    )
    assert torch.allclose(token_loss_sum(logits, labels), expected)
    assert count_targets(labels) == 5


def test_accumulation_equals_one_big_batch():
    """micro-batch 2 x 4 accumulation == micro-batch 8, in fp32, with uneven lengths and masks."""
    examples = _examples(8)
    collate = Collator(PAD)
    small = [
        collate([{"input_ids": e.input_ids, "labels": e.labels} for e in examples[i : i + 2]])
        for i in range(0, 8, 2)
    ]
    big = [collate([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])]
    targets_per_micro = [count_targets(b["labels"]) for b in small]
    assert len(set(targets_per_micro)) > 1  # otherwise a mean of means would be right by luck

    model_a, model_b = _model(), _model()
    trainer_a = _trainer(model_a, examples, micro_batch_size=2, batch_size=8)
    trainer_b = _trainer(model_b, examples, micro_batch_size=8, batch_size=8)
    assert (trainer_a.accumulation_steps, trainer_b.accumulation_steps) == (4, 1)

    loss_a, n_a = trainer_a.accumulate_gradients(small)
    loss_b, n_b = trainer_b.accumulate_gradients(big)
    assert n_a == n_b == sum(targets_per_micro)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-5)
    grads_a, grads_b = _grads(model_a), _grads(model_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7, msg=name)

    # The same micro-batches averaged as a mean of per-micro-batch means: measurably different.
    model_c = _model()
    trainer_c = _trainer(model_c, examples, micro_batch_size=2, batch_size=8)
    for batch in small:
        (trainer_c.loss_sum(batch) / count_targets(batch["labels"]) / len(small)).backward()
    worst = max((model_c.get_parameter(n).grad - grads_b[n]).abs().max().item() for n in grads_b)
    assert worst > 1e-4

    # The AdamW update of that step. Adam's first step is lr * g / (|g| + eps): coordinates whose
    # gradient is near eps (1e-8) amplify rounding noise in any implementation, so the comparison
    # covers the coordinates with |g| > 1e-6 (over 95% of the nonzero ones), to within 2e-7 absolute: the float32
    # spacing of a weight near 1.0 (norms), i.e. 2e-4 of the lr-sized update.
    before = {n: p.detach().clone() for n, p in model_b.named_parameters()}
    trainer_a.optimizer_step()
    trainer_b.optimizer_step()
    compared = 0
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        mask = grads_b[name].abs() > 1e-6
        compared += int(mask.sum())
        torch.testing.assert_close(
            (a - before[name])[mask], (b - before[name])[mask], rtol=1e-4, atol=2e-7, msg=name
        )
    nonzero = sum(int((g != 0).sum()) for g in grads_b.values())  # unused embedding rows have none
    assert compared > 0.95 * nonzero


def test_lora_freezes_the_base_and_optimizer_holds_only_adapters():
    model = _model("lora")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = _trainer(model, _examples(16), micro_batch_size=4, batch_size=8, max_steps=3, lr=1e-2)
    summary = trainer.fit()
    assert summary.steps == 3
    for name, parameter in model.named_parameters():
        changed = not torch.equal(parameter, before[name])
        assert changed == parameter.requires_grad, name  # adapters move, the base stays bit-identical
    state_params = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert state_params == trainable
    assert {id(p) for p in trainer.optimizer.state} == trainable


def test_max_steps_runs_past_one_epoch_and_epochs_stop():
    examples = _examples(12)
    trainer = _trainer(_model("lora"), examples, micro_batch_size=4, batch_size=8, max_steps=5)
    assert trainer.steps_per_epoch == 2  # 12 records: one full and one partial global batch
    assert trainer.fit().steps == 5
    trainer = _trainer(_model("lora"), examples, micro_batch_size=4, batch_size=8, epochs=2)
    assert trainer.total_steps == 4 and trainer.fit().steps == 4


def test_evaluate_is_the_token_weighted_loss_without_dropout():
    examples = _examples(6)
    set_seed(0)
    model = load_causal_lm(resolve_model(ModelSection()), ModelSection(), torch.device("cpu"))
    # Heavy LoRA dropout: evaluation must switch it off (eval mode), or the result would be random.
    model = apply_method(model, build_config({}, {"peft.lora.dropout": 0.5}).peft)
    with torch.no_grad():  # non-zero adapters, so that dropout on their input would show
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    cfg = TrainSection(micro_batch_size=4, batch_size=4, progress=False, precision="fp32")
    trainer = Trainer(model, cfg, TokenizedDataset(examples), TokenizedDataset(examples), PAD, CPU_ENV)
    model.eval()
    total, targets = 0.0, 0
    with torch.no_grad():
        for e in examples:
            logits = model(torch.tensor([e.input_ids])).logits
            total += float(token_loss_sum(logits, torch.tensor([e.labels])))
            targets += count_targets(torch.tensor([e.labels]))
    model.train()
    result = trainer.evaluate()
    assert model.training  # evaluate() restores the mode it found
    assert result["eval_loss"] == pytest.approx(total / targets, rel=1e-5)
    assert result["eval_ppl"] == pytest.approx(math.exp(total / targets), rel=1e-5)
    assert trainer.evaluate() == result


def test_divergence_is_a_clear_error():
    trainer = _trainer(_model("none"), _examples(8), micro_batch_size=4, batch_size=4, max_steps=50, lr=1e6)
    with pytest.raises(
        UserError, match=r"(train loss|gradient norm) is (nan|inf) at step \d+; lower train.lr"
    ):
        trainer.fit()


def test_non_finite_gradient_stops_before_the_update():
    model = _model("lora")
    trainer = _trainer(model, _examples(4), micro_batch_size=4, batch_size=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.accumulate_gradients(
        [Collator(PAD)([{"input_ids": e.input_ids, "labels": e.labels} for e in _examples(4)])]
    )
    next(p for p in model.parameters() if p.requires_grad).grad[0, 0] = float("nan")
    with pytest.raises(UserError, match="gradient norm is nan at step 1"):
        trainer.optimizer_step()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_batch_size_must_divide_by_world_size():
    cfg = TrainSection(micro_batch_size=4, batch_size=8)
    assert accumulation_steps(cfg, 1) == 2 and accumulation_steps(cfg, 2) == 1
    with pytest.raises(UserError, match=r"micro_batch_size x world size \(4 x 4 = 16\)"):
        accumulation_steps(cfg, 4)


def test_schedule_warmup_then_decay():
    # Warmup reaches the peak at its last step; the peak is used once; decay heads for the floor.
    factors = [lr_factor(s, warmup=2, total=6, kind="cosine", min_ratio=0.1) for s in range(6)]
    assert factors[:2] == [0.5, 1.0] and factors[2] < 1.0
    assert all(a > b for a, b in zip(factors[1:], factors[2:]))
    assert factors[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 5)))
    linear = [lr_factor(s, warmup=0, total=5, kind="linear", min_ratio=0.0) for s in range(5)]
    assert linear == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])  # no step at lr 0
    assert [lr_factor(s, warmup=1, total=2, kind="linear", min_ratio=0.0) for s in range(2)] == [1.0, 0.5]
    assert lr_factor(9, warmup=2, total=10, kind="constant", min_ratio=0.0) == 1.0


def _batch(examples: list[TokenizedExample]):
    return Collator(PAD)([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])


def test_a_global_batch_without_targets_skips_the_optimizer_step(caplog):
    model = _model("lora")
    trainer = _trainer(model, _examples(4), micro_batch_size=2, batch_size=2, weight_decay=0.1)
    untrained = [TokenizedExample(e.input_ids, [IGNORE_INDEX] * len(e.labels), False) for e in _examples(2)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = trainer.train_step([_batch(untrained)])
    assert result.target_tokens == 0 and math.isnan(result.loss) and result.grad_norm == 0.0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # no decay either
    assert not trainer.optimizer.state  # AdamW did not count a step
    assert trainer.step == 1 and trainer.scheduler.last_epoch == 1  # the step and the schedule move on
    assert "step 1: the global batch has no target token; optimizer step skipped" in caplog.text
    # The next batch with targets steps as usual.
    trainer.train_step([_batch(_examples(2))])
    assert trainer.step == 2 and len(trainer.optimizer.state) > 0
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_clip_without_gradients_is_zero():
    from llmft.distributed.parallelize import clip_grad_norm_

    assert clip_grad_norm_([torch.nn.Parameter(torch.ones(3))], 1.0) == 0.0


def test_evaluation_without_targets_is_nan_not_zero(caplog):
    untrained = [TokenizedExample(e.input_ids, [IGNORE_INDEX] * len(e.labels), False) for e in _examples(3)]
    cfg = TrainSection(micro_batch_size=2, batch_size=2, progress=False, precision="fp32")
    trainer = Trainer(
        _model("lora"), cfg, TokenizedDataset(_examples(2)), TokenizedDataset(untrained), PAD, CPU_ENV
    )
    row = trainer.evaluate()
    assert math.isnan(row["eval_loss"]) and math.isnan(row["eval_ppl"])
    assert "the validation split has no target token; eval_loss is NaN" in caplog.text


def test_optimizer_is_fused_adamw_on_cpu():
    # build_optimizer asks for the fused kernels on CPU and CUDA (falling back to foreach only where a
    # build lacks them); torch >= 2.4 has the CPU kernel, so the trainer's AdamW must be the fused one.
    trainer = _trainer(_model("lora"), _examples(2), micro_batch_size=2, batch_size=2)
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and trainer.optimizer.defaults["fused"] is True


def test_clipping_inside_the_optimizer_step():
    """max_grad_norm tiny: the update is AdamW's update of the clipped gradient (eps large, so that
    AdamW's update is proportional to the gradient and the clipping shows)."""
    batch = _batch(_examples(4))
    settings = dict(micro_batch_size=4, batch_size=4, adam_eps=1.0, lr=1e-2, weight_decay=0.0)
    clipped = _trainer(_model("none"), _examples(4), max_grad_norm=1e-3, **settings)
    reference = _trainer(_model("none"), _examples(4), **settings)  # same init (seed 0), no clipping
    unclipped = _trainer(_model("none"), _examples(4), **settings)
    for trainer in (clipped, reference, unclipped):
        trainer.accumulate_gradients([batch])
    grads = _grads(reference.model)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    for p in reference.parameters:  # clip by hand: torch's coefficient max_norm / (norm + 1e-6)
        p.grad.mul_(1e-3 / (norm + 1e-6))
    assert clipped.optimizer_step() == pytest.approx(float(norm), rel=1e-5)  # the pre-clip norm
    reference.optimizer_step()
    unclipped.optimizer_step()
    after = dict(clipped.model.named_parameters())
    for name, parameter in reference.model.named_parameters():
        assert torch.allclose(after[name], parameter, atol=1e-7, rtol=0), name
    assert any(
        not torch.allclose(after[n], p, atol=1e-6) for n, p in unclipped.model.named_parameters()
    )  # without clipping the update differs
