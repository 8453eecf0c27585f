"""Every PEFT method in one launch: train a few steps, save, reload with plain PEFT, compare, generate.

Run in one process (``python peft_worker.py OUT single``) or under torchrun (``... OUT ddp|fsdp``).
For each case it trains through the real ``llmft.finetune.finetune``, then (all ranks: a sharded
model's forward is collective) takes the trained model's logits on a probe batch; rank 0 loads the
written adapter with ``PeftModel.from_pretrained`` on a freshly loaded base and writes both logits'
largest difference, the losses, the sample and each rank's quantized-base bytes to OUT/results.json.
The test (tests/distributed/test_peft_matrix.py) asserts on that file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from llmft.config import ModelSection, build_config
from llmft.finetune import finetune
from llmft.models.loader import load_causal_lm, resolve_model
from llmft.models.quantize import quantized_base_bytes
from llmft.models.structure import hf_model, unwrap

COMMON = {
    "train.max_steps": 4,
    "train.precision": "fp32",
    "train.batch_size": 4,
    "train.micro_batch_size": 2,
    "train.eval_every": 0,
    "train.progress": False,
    "train.warmup_steps": 0,
    # One global batch of the same 4 records every step: each step's loss is on the same data, so
    # "the loss falls" means the method learns (not that the next batch happened to be easier).
    "data.max_samples": 4,
    "data.val_set_size": 0,
    "data.max_seq_len": 64,
    "generation.max_new_tokens": 4,
    "logging.tensorboard": False,
    "logging.plot": False,
}
# Each case: a name and its settings. Learning rates large enough that four steps lower the loss.
CASES = {
    "lora": {"peft.method": "lora", "peft.lora.dropout": 0.0, "train.lr": 1e-2},
    "dora": {"peft.method": "lora", "peft.lora.use_dora": True, "peft.lora.use_rslora": True,
             "peft.lora.dropout": 0.0, "peft.lora.target_modules": "q_proj,v_proj", "train.lr": 1e-2},
    "qlora": {"peft.method": "qlora", "peft.lora.dropout": 0.0, "train.lr": 1e-2},
    # One process with FSDP's 4-bit format (torchao NF4): the reference of the 2-process FSDP run.
    "qlora_torchao": {"peft.method": "qlora", "model.quant_backend": "torchao", "peft.lora.dropout": 0.0,
                      "train.lr": 1e-2},
    "lora_8bit": {"peft.method": "lora", "model.quantization": "8bit", "peft.lora.dropout": 0.0,
                  "train.lr": 1e-2},
    "ia3": {"peft.method": "ia3", "train.lr": 5e-2},
    "prefix": {"peft.method": "prefix", "peft.prefix.num_virtual_tokens": 8, "train.lr": 5e-2},
    "prompt": {"peft.method": "prompt", "peft.prompt.num_virtual_tokens": 8, "train.lr": 5e-2},
    "llama_adapter": {"peft.method": "llama_adapter", "peft.llama_adapter.adapter_len": 8,
                      "peft.llama_adapter.adapter_layers": 2, "train.lr": 5e-2},
}  # fmt: skip
PROBE = torch.tensor([[1, 50, 300, 7, 900, 12, 44, 101], [1, 60, 61, 62, 63, 64, 65, 66]])


def _base_for_reload(cfg):
    """The base a user reloads the adapter onto: as the run loaded it (bitsandbytes on one process or
    DDP; the same torchao NF4 codes, on one process, for an FSDP 4-bit run)."""
    # The run config names the resolved 4-bit backend (torchao under FSDP), so this is the run's base.
    return load_causal_lm(resolve_model(cfg.model), cfg.model, torch.device("cpu"))


def run_case(name: str, settings: dict, out: Path, strategy: str) -> dict | None:
    from peft import PeftModel

    cfg = build_config(
        {}, {**COMMON, **settings, "distributed.strategy": strategy, "output_dir": str(out / name)}
    )
    result = finetune(cfg, overwrite=True)
    model = unwrap(result.model)
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=PROBE).logits.float()
    rank = dist.get_rank() if dist.is_initialized() else 0
    share = quantized_base_bytes(hf_model(model))
    shares = [share]
    if dist.is_initialized():
        shares = [None] * dist.get_world_size()
        dist.all_gather_object(shares, share)
    if rank != 0:
        return None
    reloaded = PeftModel.from_pretrained(_base_for_reload(cfg), str(out / name)).eval()
    with torch.no_grad():
        again = reloaded(input_ids=PROBE).logits.float()
        generated = reloaded.generate(input_ids=PROBE[:1], max_new_tokens=4, do_sample=False)
    return {
        "losses": result.summary.losses,
        "max_logit_diff": float((trained - again).abs().max()),
        "generated_tokens": int(generated.shape[1] - PROBE.shape[1]),
        "sample": result.sample_text,
        "base_shares": shares,
        "adapter_files": sorted(p.name for p in (out / name).glob("adapter_*")),
    }


def main() -> None:
    out, strategy = Path(sys.argv[1]), sys.argv[2]
    names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(CASES)
    if strategy != "single":
        resolve_model(ModelSection())  # before the process group: presets are written by all
        dist.init_process_group("gloo")  # one group for every case (finetune leaves it alone)
    results = {name: run_case(name, CASES[name], out, strategy) for name in names}
    if results[names[0]] is not None:  # rank 0
        (out / "results.json").write_text(json.dumps(results, indent=1))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
