"""The memory planner against real tensors: exact parameter / gradient / optimizer bytes after a real
step, adapter sizes against HF PEFT, and the activation term against the bytes autograd saves."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from test_trainer import _examples
from transformers import LlamaConfig, LlamaForCausalLM, set_seed

from helpers import run_cli
from llmft.build import enable_activation_checkpointing as _enable_activation_checkpointing
from llmft.cli import main
from llmft.config import ModelSection, TrainSection, build_config
from llmft.data.pipeline import TokenizedDataset
from llmft.distributed.env import DistEnv
from llmft.memory.architectures import KNOWN_ARCHITECTURES, llama_shaped, resolve_shape, shape_from_hf_config
from llmft.memory.estimator import Setup, estimate, suggestions
from llmft.memory.measure import SavedTensors, optimizer_state, tensor_bytes
from llmft.memory.params import MethodSpec, inventory
from llmft.memory.report import SCHEMA, parse_size
from llmft.models.loader import load_causal_lm, resolve_model
from llmft.peft.methods import apply_method
from llmft.train.loss import token_loss_sum
from llmft.train.trainer import Trainer

CPU_ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
GIB = 2**30


@pytest.mark.parametrize(
    ("name", "published"),
    [("llama-2-7b", 6_738_415_616), ("llama-2-70b", 68_976_648_192), ("llama-3.1-8b", 8_030_261_248),
     ("llama-3.2-1b", 1_235_814_400), ("mistral-7b", 7_241_732_096)],
)  # fmt: skip
def test_known_architectures_have_their_published_parameter_counts(name, published):
    assert inventory(KNOWN_ARCHITECTURES[name], MethodSpec("full"), "fp32").count() == published


def _tiny(**overrides) -> LlamaForCausalLM:
    arch = {**resolve_shape("tiny-llama").to_dict(), **overrides}
    config = LlamaConfig(vocab_size=arch["vocab_size"], hidden_size=arch["hidden_size"],
                         intermediate_size=arch["intermediate_size"], num_hidden_layers=arch["num_layers"],
                         num_attention_heads=arch["num_heads"], num_key_value_heads=arch["num_kv_heads"],
                         tie_word_embeddings=arch["tie_word_embeddings"])  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa")


@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "prompt", "prefix", "llama_adapter"])
def test_adapter_sizes_are_those_peft_creates(method):
    import peft

    configs = {
        "lora": peft.LoraConfig(r=16, target_modules=list(MethodSpec().lora_targets)),
        "dora": peft.LoraConfig(r=16, target_modules=list(MethodSpec().lora_targets), use_dora=True),
        "ia3": peft.IA3Config(),
        "prompt": peft.PromptTuningConfig(num_virtual_tokens=20),
        "prefix": peft.PrefixTuningConfig(num_virtual_tokens=20),
        "llama_adapter": peft.AdaptionPromptConfig(adapter_len=10, adapter_layers=4),
    }
    config = configs[method]
    config.task_type = "CAUSAL_LM"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(_tiny(), config)
    real = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shape = resolve_shape("tiny-llama")
    assert inventory(shape, MethodSpec(method), "fp32").count(trainable_only=True) == real


# ---------------------------------------------------------------------------------------------------
# Parameters, gradients, optimizer states: exact, after a real step


@pytest.mark.parametrize(
    ("method", "dtype"), [("none", "float32"), ("lora", "bfloat16"), ("lora", "float32")]
)
def test_parameter_gradient_and_optimizer_bytes_are_exact(method, dtype):
    set_seed(0)
    model_cfg = ModelSection(dtype=dtype)
    model = load_causal_lm(resolve_model(model_cfg), model_cfg, torch.device("cpu"))
    model = apply_method(model, build_config({}, {"peft.method": method}).peft)
    train = TrainSection(progress=False, precision="fp32", batch_size=4, micro_batch_size=2, max_steps=1)
    trainer = Trainer(model, train, TokenizedDataset(_examples(8)), None, 3, CPU_ENV)
    _, micro_batches = next(trainer.global_batches())
    trainer.accumulate_gradients(micro_batches)
    grads = tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
    trainer.optimizer_step()

    spec = MethodSpec("full" if method == "none" else "lora")
    base = {"float32": "fp32", "bfloat16": "bf16"}[dtype]
    est = estimate(Setup(resolve_shape("tiny-llama"), spec, precision="fp32", base_dtype=base, device="cpu"))
    assert est.parameter_bytes == tensor_bytes(model.parameters())
    assert est.gradient_bytes == grads
    assert est.optimizer_bytes == tensor_bytes(optimizer_state(trainer.optimizer))  # moments + step scalars
    assert est.trainable_parameters == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("shards", [2, 3, 4, 8])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_rank0_shards_are_fsdp2s_chunks_for_uneven_first_dims(method, shards):
    """The planner's sharding rule against FSDP2's own (``_chunk_with_empty``: torch.chunk along dim 0,
    empty shards past the end) on rows that do not divide: a 1949-token vocabulary, 688 MLP rows over
    3 or 8 ranks, LoRA's 16-row A matrices over 3, and norms. Rank 0 holds the largest shard; the
    2-process test in tests/distributed covers an even split with real FSDP."""
    import peft
    from torch.distributed.fsdp._fully_shard._fsdp_common import _chunk_with_empty

    vocab = 1949
    with torch.device("meta"):
        model = _tiny(vocab_size=vocab)
        if method == "lora":
            config = peft.LoraConfig(r=16, target_modules=list(MethodSpec().lora_targets))
            model = peft.get_peft_model(model, config)
    shape = shape_from_hf_config(model.config.to_dict(), "t")
    assert shape.vocab_size == vocab
    est = estimate(Setup(shape, MethodSpec(method), strategy="fsdp", gpus=shards, precision="fp32",
                         base_dtype="fp32", device="cpu"))  # fmt: skip
    rank0 = {n: _chunk_with_empty(p, shards, dim=0)[0] for n, p in model.named_parameters()}
    assert est.parameter_bytes == sum(c.numel() * 4 for c in rank0.values())
    trained = sum(rank0[n].numel() * 4 for n, p in model.named_parameters() if p.requires_grad)
    assert est.gradient_bytes == trained
    for t in inventory(shape, MethodSpec(method), "fp32").tensors:
        rows = torch.empty(t.shape, device="meta")
        assert t.shard_numel(shards) == _chunk_with_empty(rows, shards, dim=0)[0].numel(), t.name


# ---------------------------------------------------------------------------------------------------
# Activations: the bytes autograd saves for backward


def _packed_position_ids(batch: int, seq_len: int) -> torch.Tensor:
    """Position ids of rows packed as the collator builds them: documents of a half, a quarter and the
    rest of the row, each from 0 (the trainer passes these and no attention mask)."""
    docs = [seq_len // 2, seq_len // 4, seq_len - seq_len // 2 - seq_len // 4]
    return torch.cat([torch.arange(n) for n in docs]).repeat(batch, 1)


def _measure(model, blocks, batch: int, seq_len: int, autocast: bool, packed: bool = False) -> SavedTensors:
    saved = SavedTensors(model, blocks)
    ids = torch.randint(0, 1900, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    rows = (
        {"position_ids": _packed_position_ids(batch, seq_len)}
        if packed
        else {"attention_mask": torch.ones_like(ids)}
    )
    with saved.active(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids, use_cache=False, **rows).logits
        token_loss_sum(logits, ids.clone())
    return saved


CASES = [  # method, base dtype, compute, frozen layers, model overrides
    ("full", torch.float32, "fp32", 0, {}),
    ("full", torch.float32, "bf16", 0, {}),
    ("full", torch.float32, "fp32", 2, {}),
    ("lora", torch.float32, "fp32", 0, {}),
    ("lora", torch.bfloat16, "bf16", 0, {}),
    ("lora", torch.float32, "bf16", 0, {"hidden_size": 384, "intermediate_size": 1024, "num_layers": 6,
                                        "num_heads": 6, "num_kv_heads": 2, "tie_word_embeddings": True}),
]  # fmt: skip


PACKED_CASES = [CASES[3], CASES[1]]  # LoRA fp32, full with bf16 autocast


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-frozen{c[3]}-{len(c[4])}")
def test_activation_term_matches_the_bytes_saved_for_backward(case):
    _check_activation_term(case, packed=False)


@pytest.mark.parametrize("case", PACKED_CASES, ids=lambda c: f"{c[0]}-{c[2]}")
def test_activation_term_matches_the_bytes_saved_for_backward_with_packed_rows(case):
    """Packed rows (what the benchmarks train on): per-row position ids and transformers' block-diagonal
    mask, under which SDPA keeps a (T, T) bias per layer and K/V repeated to every query head."""
    _check_activation_term(case, packed=True, sizes=((1, 32), (3, 80), (1, 256)))


def _check_activation_term(case, packed: bool, sizes=((1, 32), (3, 80))) -> None:
    import peft

    method, dtype, compute, frozen, overrides = case
    arch = {**resolve_shape("tiny-llama").to_dict(), **overrides}
    shape = shape_from_hf_config({**arch, "num_hidden_layers": arch["num_layers"],
                                  "num_attention_heads": arch["num_heads"],
                                  "num_key_value_heads": arch["num_kv_heads"]}, "t")  # fmt: skip
    spec = MethodSpec(method, num_frozen_layers=frozen)
    base = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    for checkpointing in (False, True):
        model = _tiny(**overrides).to(dtype)
        if checkpointing:
            _enable_activation_checkpointing(model)
        blocks = list(model.model.layers)
        if method == "lora":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config = peft.LoraConfig(r=16, lora_dropout=0.05, target_modules=list(spec.lora_targets))
                model = peft.get_peft_model(model, config)
        else:
            for name, parameter in model.named_parameters():
                if frozen and ("embed" in name or any(f"layers.{i}." in name for i in range(frozen))):
                    parameter.requires_grad_(False)
        model.train()
        for batch, seq_len in sizes:
            est = estimate(Setup(shape, spec, seq_len=seq_len, micro_batch=batch, precision=compute,
                                 base_dtype=base, device="cpu", activation_checkpointing=checkpointing,
                                 packed=packed))  # fmt: skip
            estimated = est.activation_bytes + est.autocast_copy_bytes
            measured = _measure(model, blocks, batch, seq_len, compute == "bf16", packed).bytes
            if checkpointing:
                # The hooks see what checkpointing keeps (each block's input, and everything outside
                # the blocks); in backward one block at a time is recomputed and holds its saved
                # tensors: the largest block, measured in a pass without checkpointing.
                getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()
                per_block = _measure(model, blocks, batch, seq_len, compute == "bf16", packed).by_block()
                measured += max(v for k, v in per_block.items() if k is not None)
                _enable_activation_checkpointing(model)
            assert estimated == pytest.approx(measured, rel=0.25), (checkpointing, batch, seq_len)
            # The walk follows transformers' forward closely: far tighter than the 25% asked for.
            assert estimated == pytest.approx(measured, rel=0.02), (checkpointing, batch, seq_len)


def test_a_run_plans_fp16_as_fp16_and_takes_the_mfu_peak_of_the_dtype_matmuls_run_in(monkeypatch):
    """An fp16 autocast is planned as fp16 (2-byte copies, an fp16 base), never relabelled bf16; without
    autocast the planner models no autocast while the MFU peak is that of the dtype the products run in
    (an fp16 base: the fp16 peak; the rule is llmft.precision.matmul_precision, tested there)."""
    from llmft.memory.run import start
    from llmft.train import observe

    peaks = []
    monkeypatch.setattr(
        observe, "peak_flops", lambda device, precision, *_: peaks.append(precision) or (None, "")
    )
    fp16_base = build_config({}, {"model.dtype": "float16"})
    without_autocast, _ = start(fp16_base, _tiny().config, CPU_ENV, None)
    assert without_autocast.setup.precision == "fp32" and peaks == ["fp16"]

    result, _ = start(fp16_base, _tiny().config, CPU_ENV, torch.float16)
    assert result.setup.precision == "fp16" and result.setup.storage == "fp16" and peaks[-1] == "fp16"
    bf16 = estimate(result.setup.replace(precision="bf16", base_dtype="bf16"))
    assert result.total_bytes == bf16.total_bytes  # same sizes, so the same plan, labelled honestly


# ---------------------------------------------------------------------------------------------------
# The seed's examples


def _largest_fitting(setup: Setup) -> int:
    """Parameters of the largest LLaMA-shaped model (widths in steps of 128) that fits ``setup``."""
    best = 0
    for hidden in range(256, 8192 + 1, 128):
        shaped = setup.replace(shape=llama_shaped(hidden))
        result = estimate(shaped)
        if not result.fits:
            break
        best = result.parameters
    return best


def test_full_finetuning_with_adamw_on_16gb_gpus_ddp_tops_out_below_1b_and_fsdp_on_4_fits_several_times_more():
    common = dict(method=MethodSpec("full"), gpus=4, seq_len=512, micro_batch=1, precision="bf16",
                  activation_checkpointing=True, gpu_memory=16e9)  # fmt: skip
    ddp = _largest_fitting(Setup(llama_shaped(256), strategy="ddp", **common))
    fsdp = _largest_fitting(Setup(llama_shaped(256), strategy="fsdp", **common))
    assert 0.3e9 < ddp < 1e9
    assert fsdp > 3 * ddp


def test_suggestions_come_smallest_first_and_fit():
    setup = Setup(KNOWN_ARCHITECTURES["llama-2-7b"], MethodSpec("lora"), gpu_memory=parse_size("24GiB"))
    assert not estimate(setup).fits
    found = suggestions(setup)
    assert found[0].change == "enable activation checkpointing"
    assert all(estimate(s.setup).fits for s in found)
    full = Setup(KNOWN_ARCHITECTURES["llama-3.1-8b"], MethodSpec("full"), gpu_memory=24 * GIB)
    (combined,) = suggestions(full)
    assert "use FSDP on" in combined.change and estimate(combined.setup).fits


def test_a_combined_suggestion_holds_only_changes_it_needs():
    """70B full fine-tuning on 24 GiB: LoRA makes the optimizer states small, so 8-bit AdamW adds
    nothing, and LoRA needs fewer GPUs than full fine-tuning; each part left is needed."""
    setup = Setup(KNOWN_ARCHITECTURES["llama-2-70b"], MethodSpec("full"), gpu_memory=24 * GIB)
    (combined,) = suggestions(setup)
    assert combined.change == (
        "enable activation checkpointing + use FSDP on 16 GPUs + LoRA instead of full fine-tuning"
    )
    assert combined.flags == ("--activation-checkpointing", "--strategy fsdp", "--gpus 8", "--nodes 2",
                              "--method lora")  # fmt: skip
    new = combined.setup
    assert new.optimizer == "adamw" and estimate(new).fits
    assert not estimate(new.replace(activation_checkpointing=False)).fits
    assert not estimate(new.replace(gpus=8, nodes=1)).fits  # 8 GPUs are not enough, 16 are the fewest
    assert not estimate(new.replace(method=MethodSpec("full"))).fits


def test_qlora_base_dtype_sets_the_unquantized_rest_of_the_base(capsys):
    """--base-dtype is not ignored by QLoRA: the NF4 projections stay 4-bit, the embeddings, norms and
    head take the dtype (llmft's QLoRA keeps them in model.dtype), and the table says so."""
    shape = KNOWN_ARCHITECTURES["llama-2-7b"]
    fp32, bf16 = (estimate(Setup(shape, MethodSpec("qlora"), base_dtype=d)) for d in ("fp32", "bf16"))
    rest = 2 * shape.vocab_size * shape.hidden_size + (2 * shape.num_layers + 1) * shape.hidden_size
    assert fp32.parameter_bytes - bf16.parameter_bytes == 2 * rest
    assert main(["estimate", "--model", "llama-2-7b", "--method", "qlora", "--base-dtype", "fp32"]) == 0
    assert "base NF4 (embeddings, norms and head fp32)" in capsys.readouterr().out


def test_parse_size():
    assert parse_size("24GiB") == 24 * GIB and parse_size("80GB") == 80e9 and parse_size("16") == 16 * GIB


# ---------------------------------------------------------------------------------------------------
# The command

JSON_KEYS = {"schema", "model", "setup", "parameters", "per_rank_bytes", "temporary_bytes", "host_bytes",
             "gpu_memory_bytes", "fits", "suggestions"}  # fmt: skip


def test_estimate_json_keys_are_stable():
    result = run_cli("estimate", "--model", "llama-3.1-70b", "--method", "qlora", "--strategy", "fsdp",
                     "--gpus", "8", "--activation-checkpointing", "--gpu-memory", "80GB", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc.keys() == JSON_KEYS and doc["schema"] == SCHEMA
    assert doc["per_rank_bytes"].keys() == {"parameters", "gradients", "optimizer_states", "activations",
                                            "autocast_weight_copies", "temporary_buffers", "cuda_context",
                                            "total"}  # fmt: skip
    assert doc["host_bytes"].keys() == {"load_rank0", "load_other_ranks", "offload"}
    assert doc["fits"] is True and doc["setup"]["world_size"] == 8
    assert sum(v for k, v in doc["per_rank_bytes"].items() if k != "total") == pytest.approx(
        doc["per_rank_bytes"]["total"], abs=8
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--method", "lora2"], "--method 'lora2' is not a method"),
     (["--gpu-memory", "lots"], "--gpu-memory 'lots' is not a memory size"),
     (["--strategy", "single", "--gpus", "4"], "--strategy single runs one process"),
     (["--cpu-offload"], "--cpu-offload needs --strategy fsdp or hsdp"),
     (["--model", "llama-2-7"], "did you mean 'llama-2-7b'?"),
     (["--method", "lora", "--num-frozen-layers", "2"], "--num-frozen-layers / --head-only apply to --method full"),
     (["--seq-len", "0"], "--seq-len 0: give a whole number"),
     (["--strategy", "hsdp", "--gpus", "4", "--nodes", "1"], "--strategy hsdp with --nodes 1 has one replica"),
     (["--train.lr", "1"], "estimate: unknown flag '--train.lr'")],
)  # fmt: skip
def test_estimate_bad_arguments_are_one_line_errors(flags, message, capsys):
    assert main(["estimate", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_estimate_table_says_what_does_not_fit_and_what_would(capsys):
    assert main(["estimate", "--model", "llama-2-7b", "--gpu-memory", "24GiB"]) == 0
    out = capsys.readouterr().out
    for row in ("parameters", "gradients", "optimizer states", "activations", "temporary buffers", "total"):
        assert f"  {row} " in out
    assert "does NOT fit in 24.00 GiB" in out and "enable activation checkpointing" in out
    assert "host memory at load: rank 0" in out


def test_the_docs_estimate_table_is_the_planners():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "memory_table.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_estimate_counts_a_lora_adapter_on_lm_head_by_its_shape():
    """--lora-targets takes lm_head like the run does; its adapter is r x (hidden + vocab) parameters."""

    def trainable(targets: str) -> int:
        result = run_cli("estimate", "--model", "llama-2-7b", "--method", "lora", "--lora-r", "8",
                         "--lora-targets", targets, "--json")  # fmt: skip
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["parameters"]["trainable"]

    assert trainable("q_proj,lm_head") - trainable("q_proj") == 8 * (4096 + 32000)
