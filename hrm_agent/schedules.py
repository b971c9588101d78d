"""Schedules as tiny pure functions of the optimizer step (cleanrl style)."""
from __future__ import annotations


def linear_schedule(start: float, end: float, duration: int, step: int) -> float:
    """Linear from `start` at step 0 to `end` at `duration`, constant afterwards (the ε schedule)."""
    if duration <= 0:
        return end
    frac = min(step / duration, 1.0)
    return start + frac * (end - start)


def warmup_constant(base: float, warmup_steps: int, step: int) -> float:
    """Linear warm-up from 0 to `base` over `warmup_steps`, then constant.

    The authors' HRM cosine schedule with `lr_min_ratio: 1.0` reduces to exactly this,
    including lr = 0 at step 0.
    """
    if warmup_steps <= 0:
        return base
    return base * min(step / warmup_steps, 1.0)
