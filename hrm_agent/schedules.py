"""Schedules as tiny pure functions of the optimizer step (cleanrl style).

`step` is an int, or a 0-d tensor on the training device: the trainer computes lr and epsilon
there, so a step reads nothing back to the host (and a CUDA graph can replay it); in float64
both give the same numbers.
"""
from __future__ import annotations

import torch


def _fraction(step, duration: int):
    """min(step / duration, 1) for an int or a tensor step."""
    frac = step / duration
    return frac.clamp(max=1.0) if isinstance(frac, torch.Tensor) else min(frac, 1.0)


def linear_schedule(start: float, end: float, duration: int, step):
    """Linear from `start` at step 0 to `end` at `duration`, constant afterwards (the ε schedule)."""
    if duration <= 0:
        return end
    return start + _fraction(step, duration) * (end - start)


def warmup_constant(base: float, warmup_steps: int, step):
    """Linear warm-up from 0 to `base` over `warmup_steps`, then constant.

    The authors' HRM cosine schedule with `lr_min_ratio: 1.0` reduces to exactly this,
    including lr = 0 at step 0.
    """
    if warmup_steps <= 0:
        return base
    return base * _fraction(step, warmup_steps)
