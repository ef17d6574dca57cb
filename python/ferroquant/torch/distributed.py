"""torch.distributed helpers of QAT: merge calibrator states over ranks (in rank order, so every rank ends with
the same state and the same IFMR result) and average the learned clips at every step (as AMCT does under DDP).
Without an initialised process group (or with one rank) every helper is a no-op."""

from __future__ import annotations

from typing import Any

import torch


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def merge_calibrator(cal: Any) -> Any:
    """A calibrator holding the observations of every rank: states are all-gathered and merged in rank order.
    Returns ``cal`` itself when not distributed."""
    n = world_size()
    if n == 1:
        return cal
    from ferroquant.calibrate import from_state_dict

    states: list = [None] * n
    torch.distributed.all_gather_object(states, cal.state_dict())
    merged = from_state_dict(states[0])
    for s in states[1:]:
        merged.merge(from_state_dict(s))
    return merged


@torch.no_grad()
def average_(*tensors: torch.Tensor) -> None:
    """In place, the mean over ranks of each tensor (one all-reduce for all of them)."""
    n = world_size()
    if n == 1 or not tensors:
        return
    flat = torch.stack([t.detach().reshape(()) for t in tensors]).double()
    torch.distributed.all_reduce(flat)
    flat /= n
    for t, v in zip(tensors, flat):
        t.copy_(v.to(t.dtype))
