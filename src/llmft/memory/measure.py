"""Measured counterparts of the planner's terms, from real tensors (used by the tests and the docs).

- :func:`tensor_bytes`: bytes of parameters, gradients or optimizer state this process holds (only
  its own shard of an FSDP DTensor).
- :func:`saved_activation_bytes`: bytes autograd saves for backward in one forward and loss, caught
  with ``torch.autograd.graph.saved_tensors_hooks``. Each storage counts once (a view or a tensor
  saved by several ops is one allocation), and parameters do not count: they are held anyway and
  belong to the parameter term. Their autocast copies *do* count: they are new allocations kept for
  backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn


def _local(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of ``tensors`` held by this process (its own shard of a DTensor)."""
    return sum(_local(t).numel() * _local(t).element_size() for t in tensors)


def optimizer_state(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    """Every tensor in the optimizer's state, including AdamW's per-parameter ``step`` scalars."""
    for state in optimizer.state.values():
        yield from (value for value in state.values() if torch.is_tensor(value))


class SavedTensors:
    """Collects the storages autograd saves while active; ``bytes`` and ``by_block`` read them.

    Blocks are attributed through forward pre-hooks on ``blocks`` (the decoder layers), so the saved
    bytes of each block can be read on their own (activation checkpointing recomputes one at a time).
    """

    def __init__(self, model: nn.Module, blocks: list[nn.Module] | None = None) -> None:
        self.exclude = {_local(p).untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: dict[int, tuple[int, int | None]] = {}  # data_ptr -> (bytes, block)
        self.blocks = blocks or []
        self._current: int | None = None

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in self.exclude and pointer not in self.storages:
            self.storages[pointer] = (storage.nbytes(), self._current)
        return tensor

    @contextlib.contextmanager
    def active(self) -> Iterator[SavedTensors]:
        handles = []
        for index, block in enumerate(self.blocks):
            handles.append(block.register_forward_pre_hook(lambda *_, i=index: setattr(self, "_current", i)))
            handles.append(block.register_forward_hook(lambda *_: setattr(self, "_current", None)))
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                yield self
        finally:
            for handle in handles:
                handle.remove()

    @property
    def bytes(self) -> int:
        return sum(size for size, _ in self.storages.values())

    def by_block(self) -> dict[int | None, int]:
        totals: dict[int | None, int] = {}
        for size, block in self.storages.values():
            totals[block] = totals.get(block, 0) + size
        return totals
