"""Micro-benchmarks of the speed and memory levers, one at a time, on the device at hand.

``python -m benchmarks.gpu_probe --size 1b`` (GPU) or ``--size tiny`` (a CPU dry run of the same code).
Each probe times forward + backward (median of several repeats after warm-up, synchronised) and the
peak memory allocated, and checks that the fast version computes the same thing as the plain one:

- attention for packed rows: transformers' ``sdpa`` (dense block-causal mask built from the position
  resets), ``flex_attention`` (block mask) and, where installed, ``flash_attention_2`` (varlen), on a
  few decoder blocks of the shape; each checked against the documents run alone;
- the LM head + cross-entropy: the full (tokens x vocab) logits against chunks of target positions only;
- ``torch.compile`` of one decoder block;
- torchao float8 training linears against bf16 (compiled both);
- optimizer step time and state bytes: torch AdamW (fused), bitsandbytes AdamW8bit, torchao AdamW8bit.

Nothing here is llmft's code path: it measures the primitives the levers are built from, so that the
choices (which attention on which device, chunk size, compile) rest on numbers from the device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

SIZES: dict[str, dict[str, int]] = {
    "1b": dict(hidden=2048, inter=8192, heads=32, kv=8, head_dim=64, vocab=128256, rows=8, seq=2048, layers=4),
    "tiny": dict(hidden=64, inter=176, heads=4, kv=2, head_dim=16, vocab=4096, rows=2, seq=256, layers=2),
}  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(fn: Callable[[], Any], device: torch.device, warmup: int = 2, repeat: int = 5) -> dict[str, float]:
    """Median milliseconds of ``fn`` and the peak memory allocated during one call (CUDA only)."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - started) * 1e3)
    out = {"ms": statistics.median(times)}
    if device.type == "cuda":
        out["peak_extra_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
    return out


def doc_lengths(total: int, seed: int) -> list[int]:
    """Alpaca-like document lengths (64-682 tokens at 2048) filling one row of ``total`` tokens."""
    g = torch.Generator().manual_seed(seed)
    lengths = []
    while sum(lengths) < total:
        lengths.append(int(torch.randint(max(2, total // 32), total // 3, (1,), generator=g)))
    lengths[-1] -= sum(lengths) - total
    return [n for n in lengths if n > 0]


def packed_positions(rows: int, seq: int) -> torch.Tensor:
    return torch.stack([torch.cat([torch.arange(n) for n in doc_lengths(seq, r)]) for r in range(rows)])


def probe_attention(s: dict[str, int], device: torch.device) -> dict[str, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    results: dict[str, Any] = {}
    positions = packed_positions(s["rows"], s["seq"]).to(device)
    ids = torch.randint(0, 1000, (s["rows"], s["seq"]), device=device)
    impls = ["sdpa", "flex_attention", "eager"]
    try:
        import flash_attn  # noqa: F401

        impls.append("flash_attention_2")
    except ImportError:
        results["flash_attention_2"] = "not installed"
    for impl in impls:
        try:
            torch.manual_seed(0)
            config = LlamaConfig(hidden_size=s["hidden"], intermediate_size=s["inter"], num_hidden_layers=s["layers"],
                                 num_attention_heads=s["heads"], num_key_value_heads=s["kv"], head_dim=s["head_dim"],
                                 vocab_size=1024, max_position_embeddings=s["seq"] * 2)  # fmt: skip
            config._attn_implementation = impl
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
            model = LlamaForCausalLM(config).to(device=device, dtype=dtype)

            def step(model=model) -> None:
                out = model(input_ids=ids, position_ids=positions, use_cache=False)
                out.logits.float().sum().backward()

            if impl == "flex_attention" and device.type == "cpu":

                def step(model=model) -> None:  # noqa: F811 - FlexAttention has no backward on the CPU
                    with torch.no_grad():
                        model(input_ids=ids, position_ids=positions, use_cache=False)

            r = bench(step, device) if impl != "eager" or device.type != "cuda" else {"ms": None}
            # Correctness: the first document of row 0 alone gives the same logits as inside the row.
            starts = (positions[0] == 0).nonzero().squeeze(1).tolist() + [s["seq"]]
            n, end = starts[1], starts[2]
            with torch.no_grad():
                packed = model(
                    input_ids=ids[:1, :end], position_ids=positions[:1, :end], use_cache=False
                ).logits
                second = model(input_ids=ids[:1, n:end], use_cache=False).logits
            r["max_abs_diff_second_doc_vs_alone"] = float((packed[0, n:] - second[0]).abs().max())
            r["logit_scale"] = float(second.abs().max())
            results[impl] = r
            del model
        except Exception as exc:  # noqa: BLE001 - a probe reports and goes on
            results[impl] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            traceback.print_exc()
    # The unpacked reference: plain causal attention over the whole row (wrong for packed data, but the
    # fastest kernel: the ceiling of what a document mask can reach).
    return results


def probe_loss(s: dict[str, int], device: torch.device) -> dict[str, Any]:
    """LM head + CE: full logits vs target-only chunks (30% of positions are targets)."""
    n_tokens = s["rows"] * s["seq"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    hidden = torch.randn(n_tokens, s["hidden"], device=device, dtype=dtype, requires_grad=True)
    weight = (torch.randn(s["vocab"], s["hidden"], device=device, dtype=dtype) * 0.02).requires_grad_()
    labels = torch.randint(0, s["vocab"], (n_tokens,), device=device)
    labels[torch.rand(n_tokens, device=device) < 0.7] = -100

    def full() -> torch.Tensor:
        logits = hidden @ weight.T
        return F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")

    def chunked(chunk: int = 4096) -> torch.Tensor:
        keep = (labels != -100).nonzero().squeeze(1)
        h, y = hidden.index_select(0, keep), labels.index_select(0, keep)
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, h.shape[0], chunk):

            def piece(h_: torch.Tensor, y_: torch.Tensor) -> torch.Tensor:
                return F.cross_entropy((h_ @ weight.T).float(), y_, reduction="sum")

            total = total + torch.utils.checkpoint.checkpoint(
                piece, h[start : start + chunk], y[start : start + chunk], use_reentrant=False
            )
        return total

    out: dict[str, Any] = {}
    ref = full()
    ref.backward()
    g_ref = weight.grad.clone()
    weight.grad = hidden.grad = None
    val = chunked()
    val.backward()
    out["rel_loss_diff"] = float((val - ref).abs().detach() / ref.abs().detach())
    out["rel_grad_diff"] = float((weight.grad.float() - g_ref.float()).norm() / g_ref.float().norm())
    for name, fn in [("full", full), ("chunked_targets", chunked)]:

        def step(fn=fn) -> None:
            weight.grad = hidden.grad = None
            fn().backward()

        out[name] = bench(step, device)
    return out


def probe_compile(s: dict[str, int], device: torch.device) -> dict[str, Any]:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=s["hidden"], intermediate_size=s["inter"], num_attention_heads=s["heads"],
                         num_key_value_heads=s["kv"], head_dim=s["head_dim"], vocab_size=1024)  # fmt: skip
    config._attn_implementation = "sdpa"
    dtype = torch.bfloat16
    layer = LlamaDecoderLayer(config, 0).to(device=device, dtype=dtype)
    rope = LlamaRotaryEmbedding(config).to(device)
    x = torch.randn(s["rows"], s["seq"], s["hidden"], device=device, dtype=dtype, requires_grad=True)
    pos = torch.arange(s["seq"], device=device).expand(s["rows"], -1)
    cos_sin = rope(x, pos)
    out: dict[str, Any] = {}
    compiled = torch.compile(layer)
    for name, module in [("eager", layer), ("compiled", compiled)]:

        def step(module=module) -> None:
            y = module(x, attention_mask=None, position_embeddings=cos_sin, position_ids=pos)
            y = y[0] if isinstance(y, tuple) else y
            y.float().sum().backward()

        try:
            started = time.perf_counter()
            step()
            sync(device)
            out[f"{name}_first_call_s"] = time.perf_counter() - started
            out[name] = bench(step, device)
        except Exception as exc:  # noqa: BLE001
            out[name] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            traceback.print_exc()
    return out


def probe_float8(s: dict[str, int], device: torch.device) -> dict[str, Any]:
    if device.type != "cuda" or torch.cuda.get_device_capability() < (8, 9):
        return {"skipped": "float8 needs CUDA compute capability 8.9+"}
    from torchao.float8 import convert_to_float8_training

    def mlp() -> torch.nn.Module:
        torch.manual_seed(0)
        layers = []
        for _ in range(4):
            layers += [torch.nn.Linear(s["hidden"], s["inter"], bias=False), torch.nn.SiLU(),
                       torch.nn.Linear(s["inter"], s["hidden"], bias=False)]  # fmt: skip
        return torch.nn.Sequential(*layers).to(device=device, dtype=torch.bfloat16)

    x = torch.randn(s["rows"] * s["seq"], s["hidden"], device=device, dtype=torch.bfloat16)
    out: dict[str, Any] = {}
    base = mlp()
    fp8 = convert_to_float8_training(mlp())
    ref = base(x).float()
    got = fp8(x).float()
    out["rel_out_diff"] = float((got - ref).norm() / ref.norm())
    for name, module in [("bf16_compiled", torch.compile(base)), ("float8_compiled", torch.compile(fp8))]:

        def step(module=module) -> None:
            module(x).float().sum().backward()

        try:
            out[name] = bench(step, device)
        except Exception as exc:  # noqa: BLE001
            out[name] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            traceback.print_exc()
    return out


def probe_optimizers(s: dict[str, int], device: torch.device) -> dict[str, Any]:
    numel_target = 1_200_000_000 if device.type == "cuda" else 2_000_000
    shape = (s["inter"], s["hidden"])
    count = max(1, numel_target // (shape[0] * shape[1]))
    out: dict[str, Any] = {"params": count * shape[0] * shape[1]}
    makers: list[tuple[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]]] = [
        (
            "adamw_fused" if device.type == "cuda" else "adamw",
            lambda p: torch.optim.AdamW(p, lr=1e-4, fused=device.type == "cuda"),
        ),  # fmt: skip
    ]
    try:
        import bitsandbytes as bnb

        makers.append(("bnb_adamw8bit", lambda p: bnb.optim.AdamW8bit(p, lr=1e-4)))
    except ImportError as exc:
        out["bnb_adamw8bit"] = f"not installed: {exc}"
    try:
        from torchao.optim import AdamW8bit

        makers.append(("torchao_adamw8bit", lambda p: AdamW8bit(p, lr=1e-4)))
    except ImportError as exc:
        out["torchao_adamw8bit"] = f"not installed: {exc}"
    for name, make in makers:
        try:
            params = [torch.nn.Parameter(torch.randn(shape, device=device) * 0.02) for _ in range(count)]
            for p in params:
                p.grad = torch.randn_like(p) * 1e-3
            before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
            opt = make(params)
            opt.step()
            sync(device)
            state = (torch.cuda.memory_allocated() - before) / 2**30 if device.type == "cuda" else None
            r = bench(opt.step, device, warmup=1, repeat=3)
            r["state_gib"] = state
            out[name] = r
            del opt, params
            if device.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001
            out[name] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            traceback.print_exc()
    return out


PROBES = {"attention": probe_attention, "loss": probe_loss, "compile": probe_compile,
          "float8": probe_float8, "optimizers": probe_optimizers}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_probe")
    parser.add_argument("--size", default="1b", choices=sorted(SIZES))
    parser.add_argument("--only", default=",".join(PROBES), help="comma list of probes")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    s = SIZES[args.size]
    doc: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                           "torch": torch.__version__, "size": args.size, "probes": {}}  # fmt: skip
    for name in args.only.split(","):
        started = time.perf_counter()
        try:
            doc["probes"][name] = PROBES[name](s, device)
        except Exception as exc:  # noqa: BLE001
            doc["probes"][name] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            traceback.print_exc()
        doc["probes"][name + "_wall_s"] = round(time.perf_counter() - started, 1)
        print(name, json.dumps(doc["probes"][name], default=str), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, default=str)
    return doc


if __name__ == "__main__":
    main()
