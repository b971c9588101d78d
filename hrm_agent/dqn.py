"""The DQN pieces of HRM-Agent (paper-notes §3): TD(0) target, loss, Polyak target update."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def td_target(reward: Tensor, terminated: Tensor, q_next: Tensor, gamma: float | Tensor) -> Tensor:
    """y = r + γ·max_a' Q_target(s', a'), without the bootstrap only when the episode
    *terminated* at the goal. Truncation at the step limit still bootstraps: the state
    itself is not terminal, the episode was just cut (as in the authors' code).
    For n-step returns, r is the discounted return and γ the per-sample γ^n."""
    return reward + gamma * (~terminated).to(q_next.dtype) * q_next.max(dim=-1).values


def q_loss(q: Tensor, actions: Tensor, y: Tensor) -> Tensor:
    """MSE between Q(s, a_taken) and the target (the authors use `nn.MSELoss`, no Huber)."""
    q_taken = q.gather(1, actions.long()[:, None]).squeeze(1)
    return F.mse_loss(q_taken, y)


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    """target ← decay·target + (1−decay)·online for parameters; buffers (H_init, L_init) are
    copied exactly, as the authors' soft update does."""
    t_params, o_params = list(target.parameters()), list(online.parameters())
    torch._foreach_lerp_(t_params, o_params, 1.0 - decay)
    t_bufs, o_bufs = list(target.buffers()), list(online.buffers())
    if t_bufs:  # one kernel for all, where a copy each is a kernel each
        torch._foreach_copy_(t_bufs, o_bufs)
