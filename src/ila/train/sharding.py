"""Whole tensors out of FSDP2-sharded parameters, and gates outside FSDP's reach.

Under FSDP (version 2, ``torch.distributed.fsdp.fully_shard``, which accelerate's FSDP
plugin applies when the Trainer prepares the model) every parameter the model held when
it was prepared becomes a ``DTensor`` whose process holds one slice along dim 0. ila
reads a few parameters whole outside the forward pass (docs/distributed.md, "Sharded
training"): each unit's LoRA A and B for the stage-1 update norms and the saved adapter,
the stage-2 gate scores, and the weights a fine-tune changed. :func:`whole` gathers one
such tensor; gathering is a collective, so every process must call it for the same
tensors in the same order (ila does so in code that every process runs, and writes files
from the main process only afterwards).

Stage 2 adds its gate scores to a model that stage 1's Trainer may already have sharded;
FSDP does not manage a parameter added after ``fully_shard``, so nothing would average its
gradient across processes. :func:`average_unmanaged_gradients` does that with a hook, as
DDP would.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

__all__ = ["average_unmanaged_gradients", "is_sharded", "whole", "whole_tensors"]


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a parameter under FSDP2)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full value of ``tensor``: gathered from every process if it is a ``DTensor``,
    itself otherwise. A collective under FSDP: every process must call it."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def whole_tensors(
    tensors: Mapping[str, torch.Tensor], *, keep: bool = True
) -> dict[str, torch.Tensor]:
    """Every tensor of ``tensors`` whole, detached, contiguous and on the CPU, one at a time
    (so at most one gathered tensor is on the accelerator at once).

    ``keep`` false (the processes that write nothing) gathers, as the collective requires,
    and drops the result: only the main process holds a copy on the CPU.
    """
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        value = whole(tensor.detach())
        if keep:
            out[name] = value.cpu().contiguous()
    return out


def average_unmanaged_gradients(model: nn.Module, params: Iterable[nn.Parameter]) -> int:
    """Average the gradients of ``params`` over the processes after every backward pass,
    when ``model`` is sharded by FSDP but these parameters are not (added after it was
    prepared). Returns how many parameters got the hook (0 outside FSDP, or when FSDP
    manages them: then it averages them itself)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0
    if not any(is_sharded(p) for p in model.parameters()):
        return 0
    world = dist.get_world_size()

    def average(param: torch.Tensor) -> None:
        dist.all_reduce(param.grad)
        param.grad.div_(world)

    unmanaged = [p for p in params if not is_sharded(p)]
    for param in unmanaged:
        param.register_post_accumulate_grad_hook(average)
    return len(unmanaged)
