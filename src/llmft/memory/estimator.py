"""The memory planner: what one rank holds during training, term by term, and what to change if it
does not fit.

Written by hand because no library answers this: accelerate's ``estimate-memory`` counts weights
only, and a dry run on the real hardware is what users want to avoid. The parameter, gradient and
optimizer terms are exact byte counts of the tensors llmft creates (checked against real tensors, one
process and each FSDP rank); activations follow transformers' LLaMA forward (checked against the
bytes autograd saves); temporary buffers are modelled (see docs/memory.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from llmft.errors import UserError
from llmft.memory.activations import ActivationSetup, activation_bytes
from llmft.memory.architectures import ModelShape
from llmft.memory.params import DTYPE_BYTES, Inventory, MethodSpec, inventory

STRATEGIES = ("single", "ddp", "fsdp", "hsdp")
OPTIMIZERS = ("adamw", "adamw8bit", "sgd")
GIB = 2**30
# CUDA's context (kernels, cuBLAS workspace) before any tensor, measured on recent drivers: 0.5-1 GiB.
CUDA_CONTEXT_BYTES = 0.75 * GIB


@dataclass(frozen=True)
class Setup:
    """One training setup to plan for (the ``llmft estimate`` flags; or a run's config)."""

    shape: ModelShape
    method: MethodSpec = field(default_factory=MethodSpec)
    strategy: str = "single"
    gpus: int = 1  # processes per node
    nodes: int = 1
    seq_len: int = 2048
    micro_batch: int = 1
    precision: str = "bf16"  # compute: fp32 (no autocast), bf16 / fp16 (autocast)
    base_dtype: str | None = None  # frozen base storage; None: bf16 for PEFT with bf16/fp16, else fp32
    fsdp_param_dtype: str | None = None  # FSDP's gather dtype; None: as stored
    activation_checkpointing: bool = False
    optimizer: str = "adamw"
    cpu_offload: bool = False
    attention: str = "sdpa"
    packed: bool = False  # rows packed with several documents (a block-diagonal attention mask)
    device: str = "cuda"
    gpu_memory: float | None = None  # bytes per GPU, for the fit check

    @property
    def world_size(self) -> int:
        return self.gpus * self.nodes

    @property
    def shards(self) -> int:
        """Processes each sharded tensor is split over: all (fsdp), those of a node (hsdp), or 1."""
        return {"fsdp": self.world_size, "hsdp": self.gpus}.get(self.strategy, 1)

    @property
    def storage(self) -> str:
        if self.base_dtype:
            return self.base_dtype
        return "bf16" if self.method.name != "full" and self.precision != "fp32" else "fp32"

    def replace(self, **changes: Any) -> Setup:
        return dataclasses.replace(self, **changes)

    def check(self) -> None:
        """UserErrors that name the flag, for settings that cannot go together."""
        choices = (("--strategy", self.strategy, STRATEGIES), ("--optimizer", self.optimizer, OPTIMIZERS),
                   ("--precision", self.precision, tuple(DTYPE_BYTES)), ("--attention", self.attention,
                   ("sdpa", "eager")))  # fmt: skip
        for flag, value, allowed in choices:
            if value not in allowed:
                raise UserError(f"{flag} '{value}' is not one of {', '.join(allowed)}")
        for flag, value in (("--gpus", self.gpus), ("--nodes", self.nodes), ("--seq-len", self.seq_len),
                            ("--micro-batch", self.micro_batch)):  # fmt: skip
            if value < 1:
                raise UserError(f"{flag} {value}: give a whole number of at least 1")
        if self.strategy == "single" and self.world_size > 1:
            raise UserError(
                f"--strategy single runs one process, but --gpus {self.gpus} x --nodes {self.nodes} = "
                f"{self.world_size}; use --strategy ddp or fsdp, or --gpus 1"
            )
        if self.strategy == "hsdp" and self.nodes < 2:
            raise UserError(
                f"--strategy hsdp with --nodes {self.nodes} has one replica, which is plain FSDP; give "
                f"--nodes N (N replicas, each sharded over one node's --gpus) or use --strategy fsdp"
            )
        if self.cpu_offload and self.strategy not in ("fsdp", "hsdp"):
            raise UserError("--cpu-offload needs --strategy fsdp or hsdp (FSDP2 offloads shards)")
        if self.method.name == "full" and self.storage != "fp32":
            raise UserError(
                f"--base-dtype {self.storage} with --method full would train low-precision weights; llmft "
                f"keeps fp32 weights and computes in --precision bf16 (drop --base-dtype)"
            )


@dataclass
class Estimate:
    """Bytes per rank, by term; ``host_*`` are CPU memory. See :mod:`llmft.memory.report`."""

    setup: Setup
    parameters: int
    trainable_parameters: int
    parameter_bytes: float
    gradient_bytes: float
    optimizer_bytes: float
    activation_bytes: float
    autocast_copy_bytes: float
    temporary: dict[str, float]
    cuda_context_bytes: float
    host_load_rank0: float
    host_load_other: float
    host_offload: float

    @property
    def temporary_bytes(self) -> float:
        return sum(self.temporary.values())

    @property
    def total_bytes(self) -> float:
        return (self.parameter_bytes + self.gradient_bytes + self.optimizer_bytes + self.activation_bytes
                + self.autocast_copy_bytes + self.temporary_bytes + self.cuda_context_bytes)  # fmt: skip

    @property
    def fits(self) -> bool | None:
        return None if self.setup.gpu_memory is None else self.total_bytes <= self.setup.gpu_memory


def _optimizer_bytes(numel: int, kind: str) -> float:
    """Optimizer state of one trainable tensor of ``numel`` elements (fp32 parameters).

    adamw: two fp32 moments (8 B per element) and a ``step`` scalar (a 4-byte tensor per parameter in
    torch's AdamW). adamw8bit (bitsandbytes): two 8-bit moments with an fp32 scale per 256-element
    block; tensors under 4096 elements keep fp32 moments. sgd: one fp32 momentum buffer.
    """
    if kind == "adamw":
        return 8 * numel + 4
    if kind == "adamw8bit":
        return 8 * numel if numel < 4096 else 2 * numel + 2 * 4 * -(-numel // 256)
    return 4 * numel


def estimate(setup: Setup) -> Estimate:
    """Plan one rank of ``setup`` (rank 0: under FSDP it holds the largest shards)."""
    setup.check()
    inv: Inventory = inventory(setup.shape, setup.method, setup.storage)
    shards = setup.shards
    sharded = setup.strategy in ("fsdp", "hsdp")
    on_gpu = 0.0 if setup.cpu_offload else 1.0

    def local(t) -> int:
        return t.shard_numel(shards) if sharded else t.numel

    param_bytes = sum(local(t) * t.bytes_per_element for t in inv.tensors)
    # Gradients have the parameter's dtype (fp32: everything that trains is fp32) and its sharding.
    grad_bytes = sum(local(t) * 4 for t in inv.trainable)
    opt_bytes = sum(_optimizer_bytes(local(t), setup.optimizer) for t in inv.trainable)

    # The residual stream and the unquantized base as the forward sees them: FSDP's gather dtype when
    # set, else as stored (fp32 for full fine-tuning).
    store_bytes = DTYPE_BYTES[setup.fsdp_param_dtype if sharded and setup.fsdp_param_dtype else setup.storage]
    autocast = setup.precision != "fp32"
    compute_bytes = DTYPE_BYTES[setup.precision] if autocast else store_bytes
    act_setup = ActivationSetup(store_bytes, compute_bytes, autocast, 1 if setup.device == "cuda" else 4,
                                setup.attention, setup.packed)  # fmt: skip
    acts = activation_bytes(setup.shape, setup.method, inv, act_setup, setup.seq_len)
    tokens = setup.micro_batch * acts.tokens_per_row
    copies = acts.weight_copies(setup.micro_batch, setup.activation_checkpointing)
    saved = acts.total(setup.micro_batch, setup.activation_checkpointing) - copies

    temporary = {
        # The logits (compute dtype) and, in backward, the fp32 gradient of the loss over them.
        "logits": tokens * setup.shape.vocab_size * (compute_bytes + 4),
    }
    if setup.packed:
        # The boolean block-diagonal mask transformers builds from the position ids, (B, 1, T, T).
        temporary["packed_attention_mask"] = setup.micro_batch * acts.tokens_per_row**2
    if sharded:
        block = [t for t in inv.tensors if t.block == 0]
        gather = DTYPE_BYTES[setup.fsdp_param_dtype] if setup.fsdp_param_dtype else None
        block_bytes = sum(t.numel * (gather or t.bytes_per_element) for t in block)
        # The current block and the prefetched next one, unsharded; one block's unsharded gradients
        # before their reduce-scatter; and the root (embeddings, final norm, head), which stays
        # gathered from forward to backward.
        temporary["fsdp_all_gather"] = 2 * block_bytes
        temporary["fsdp_reduce_scatter"] = sum(t.numel * 4 for t in block if t.trainable)
        root = [t for t in inv.tensors if t.block is None and not t.adapter]
        temporary["fsdp_root"] = sum((t.numel - t.shard_numel(shards)) * (gather or t.bytes_per_element)
                                     for t in root)  # fmt: skip
    if setup.strategy == "ddp":
        # DDP's communication buckets hold a second copy of every gradient (gradient_as_bucket_view off).
        temporary["ddp_buckets"] = grad_bytes
    # Under FSDP's CPU offload, the shards and the optimizer live in host memory.
    host_offload = (param_bytes + grad_bytes + opt_bytes) * (1 - on_gpu)
    full_bytes = sum(t.numel * t.bytes_per_element for t in inv.tensors)
    if sharded:
        # Rank 0 reads the whole checkpoint on the CPU and sends each rank its shards.
        host_rank0, host_other = full_bytes + host_offload, host_offload
    else:
        host_rank0 = host_other = full_bytes  # every process loads on the CPU, then moves to the GPU
    return Estimate(
        setup=setup,
        parameters=inv.count(),
        trainable_parameters=inv.count(trainable_only=True),
        parameter_bytes=param_bytes * on_gpu,
        gradient_bytes=grad_bytes * on_gpu,
        optimizer_bytes=opt_bytes * on_gpu,
        activation_bytes=saved,
        autocast_copy_bytes=copies,
        temporary=temporary,
        cuda_context_bytes=CUDA_CONTEXT_BYTES if setup.device == "cuda" else 0.0,
        host_load_rank0=host_rank0,
        host_load_other=host_other,
        host_offload=host_offload,
    )


@dataclass(frozen=True)
class Suggestion:
    """A change of setup that makes it fit, with the flags that make it and the new total."""

    change: str
    flags: tuple[str, ...]
    setup: Setup
    total_bytes: float


def _scale_out(setup: Setup, world_size: int) -> Setup:
    gpus = min(world_size, 8)
    return setup.replace(strategy="fsdp", gpus=gpus, nodes=world_size // gpus)


def _changes(setup: Setup):
    """Candidate changes, smallest first: (description, flags, changed setup) for those that apply."""
    if not setup.activation_checkpointing:
        yield (
            "enable activation checkpointing",
            ("--activation-checkpointing",),
            setup.replace(activation_checkpointing=True),
        )
    if setup.micro_batch > 1:
        yield (
            "micro-batch 1 (accumulate gradients instead)",
            ("--micro-batch 1",),
            setup.replace(micro_batch=1),
        )
    if setup.optimizer == "adamw":
        yield "8-bit AdamW", ("--optimizer adamw8bit",), setup.replace(optimizer="adamw8bit")
    if setup.strategy in ("single", "ddp") and setup.world_size > 1:
        yield (
            f"use FSDP on the same {setup.world_size} GPUs",
            ("--strategy fsdp",),
            setup.replace(strategy="fsdp"),
        )
    sharded = setup.strategy in ("fsdp", "hsdp")
    for world in (2, 4, 8, 16, 32, 64):
        if world > (setup.shards if sharded else 1) and world >= setup.world_size:
            new = _scale_out(setup, world)
            flags = ("--strategy fsdp", f"--gpus {new.gpus}") + (
                (f"--nodes {new.nodes}",) if new.nodes > 1 else ()
            )
            yield f"use FSDP on {world} GPUs", flags, new
    if sharded and not setup.cpu_offload:
        yield "offload shards and optimizer to the CPU", ("--cpu-offload",), setup.replace(cpu_offload=True)
    if setup.method.name == "full":
        yield (
            "LoRA instead of full fine-tuning",
            ("--method lora",),
            setup.replace(
                method=dataclasses.replace(setup.method, name="lora", num_frozen_layers=0, head_only=False)
            ),
        )
    if setup.method.name in ("full", "lora", "dora"):
        yield (
            "use a 4-bit base (QLoRA)",
            ("--method qlora",),
            setup.replace(
                method=dataclasses.replace(setup.method, name="qlora", num_frozen_layers=0, head_only=False),
                base_dtype=None,
            ),
        )
    if setup.seq_len > 512:
        yield f"shorter sequences ({setup.seq_len // 2} tokens)", (f"--seq-len {setup.seq_len // 2}",), \
            setup.replace(seq_len=setup.seq_len // 2)  # fmt: skip


def suggestions(setup: Setup, limit: int = 3) -> list[Suggestion]:
    """What would make ``setup`` fit in ``setup.gpu_memory``, smallest change first.

    Single changes that fit come first, in the order of :func:`_changes` (cheapest for the user: a
    flag that costs some speed before more GPUs, before another method); if none does, one combined
    suggestion adds changes in that order until the setup fits. Empty if it fits already or no
    memory was given.
    """
    if setup.gpu_memory is None or estimate(setup).fits:
        return []
    found, seen_scale_out = [], False
    for change, flags, new in _changes(setup):
        if change.startswith("use FSDP on") and seen_scale_out:
            continue
        result = estimate(new)
        if result.fits:
            found.append(Suggestion(change, flags, new, result.total_bytes))
            seen_scale_out = seen_scale_out or change.startswith("use FSDP on")
        if len(found) == limit:
            return found
    if found:
        return found
    current, steps = setup, []  # the changes, in order
    for change, _, _ in _changes(setup):
        candidates = [n for c, _, n in _changes(current) if c == change]
        if not candidates or estimate(candidates[0]).total_bytes >= estimate(current).total_bytes:
            continue
        if change.startswith("use FSDP on"):  # more GPUs replace fewer
            steps = [c for c in steps if "FSDP" not in c]
        current, steps = candidates[0], [*steps, change]
        if estimate(current).fits:
            return [_combined(setup, _needed(setup, steps))]
    return []


def _apply(setup: Setup, steps: list[str]) -> tuple[Setup, tuple[str, ...]] | None:
    """``setup`` with the named changes made in order, and their flags; None if one does not apply."""
    flags: tuple[str, ...] = ()
    for step in steps:
        match = [(f, n) for c, f, n in _changes(setup) if c == step]
        if not match:
            return None
        flags, setup = flags + match[0][0], match[0][1]
    return setup, flags


def _fits(setup: Setup, steps: list[str]) -> bool:
    applied = _apply(setup, steps)
    return applied is not None and bool(estimate(applied[0]).fits)


def _needed(setup: Setup, steps: list[str]) -> list[str]:
    """The changes of a fitting combination without those it fits without (8-bit AdamW adds nothing
    once LoRA leaves few optimizer states), tried from the costliest (added last) down; then the
    fewest GPUs that still fit when the combination scales out."""
    for step in reversed(list(steps)):
        trial = [s for s in steps if s != step]
        if _fits(setup, trial):
            steps = trial

    def scales_out(change: str) -> bool:
        return change.startswith("use FSDP on ") and "same" not in change

    scale_out = next((s for s in steps if scales_out(s)), None)
    if scale_out is not None:
        for fewer in (c for c, _, _ in _changes(setup) if scales_out(c)):  # smallest first
            trial = [fewer if s == scale_out else s for s in steps]
            if _fits(setup, trial):
                return trial
    return steps


def _combined(setup: Setup, steps: list[str]) -> Suggestion:
    applied = _apply(setup, steps)
    assert applied is not None  # the steps were checked to apply and fit
    new, flags = applied
    return Suggestion(" + ".join(steps), flags, new, estimate(new).total_bytes)
