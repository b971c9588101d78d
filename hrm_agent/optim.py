"""The authors' optimizers in pure PyTorch, so the paper profile runs anywhere (paper-notes §3).

- AdamATan2 (Everett et al. 2024; the `adam-atan2` package HRM uses is a CUDA-only extension):
  Adam with the division m/(sqrt(v)+eps) replaced by atan2(m, sqrt(v)), which is bounded and
  needs no epsilon. Per step, with bias corrections bc1 = 1-beta1^t, bc2 = 1-beta2^t:
      m <- beta1 m + (1-beta1) g;   v <- beta2 v + (1-beta2) g^2
      p <- p (1 - lr wd) - (lr / bc1) atan2(m, sqrt(v) / sqrt(bc2))
- SignSGD for the task (puzzle) embedding, as HRM's sparse embedding optimizer:
      p <- p (1 - lr wd) - lr sign(g)

Both are *capturable*: the step counts live on the parameters' device (float64, so the bias
corrections round as Python's floats would) and `lr` may be a 0-d tensor there, so a step reads
nothing back to the host and can be replayed inside a CUDA graph. The updates run as `foreach`
ops over all parameters at once, except atan2, which has no foreach form (one kernel each);
`AdamATan2(fused=True)` runs every parameter's whole update as one Triton kernel instead
(fused_optim.py; CUDA).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class AdamATan2(torch.optim.Optimizer):
    def __init__(self, params, lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 1e-2, fused: bool = False):
        if lr < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid AdamATan2 settings lr={lr}, betas={betas}, "
                             f"weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))
        if fused:
            _check_fusable(self.param_groups)
        self.fused = fused  # not a group setting: a checkpoint's groups would carry it to a resume

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)  # leaves the step counts where they were saved
        for p, state in self.state.items():
            if "step" in state:
                state["step"] = state["step"].to(device=p.device, dtype=torch.float64)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            states = [self.state[p] for p in params]
            grads = [p.grad for p in params]
            m = [s["exp_avg"] for s in states]
            v = [s["exp_avg_sq"] for s in states]
            # Per parameter: one that got its first gradient later has taken fewer steps than
            # the others in its group (as in torch.optim.Adam).
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1)
            step_size = _bias_correction(beta1, steps)  # lr / bc1
            torch._foreach_reciprocal_(step_size)
            torch._foreach_mul_(step_size, lr)
            bc2_sqrt = torch._foreach_sqrt(_bias_correction(beta2, steps))
            if self.fused:
                from hrm_agent.fused_optim import adam_atan2_

                decay = None
                if wd:
                    decay = 1 - lr * wd
                    if not isinstance(decay, Tensor):
                        decay = torch.full((), decay, dtype=torch.float64, device=params[0].device)
                adam_atan2_(params, grads, m, v, step_size, bc2_sqrt, decay, beta1, beta2)
                continue
            torch._foreach_lerp_(m, grads, 1 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, bc2_sqrt)
            update = [torch.atan2(m_i, d_i) for m_i, d_i in zip(m, denom)]
            torch._foreach_mul_(update, step_size)
            torch._foreach_sub_(params, update)
        return loss


def _check_fusable(groups: list[dict]) -> None:
    """A ValueError that says why fused_optim's kernel cannot update these parameters, if it
    cannot: it needs triton, and contiguous fp32 tensors on CUDA (or Triton's interpreter)."""
    try:
        from hrm_agent.fused_optim import INTERPRET
    except ImportError as exc:
        raise ValueError(f"the fused AdamATan2 needs triton: {exc}") from None
    for p in (p for group in groups for p in group["params"]):
        if not ((p.is_cuda or INTERPRET) and p.dtype == torch.float32 and p.is_contiguous()):
            raise ValueError("the fused AdamATan2 needs contiguous fp32 parameters on a CUDA "
                             f"device, got a {p.dtype} one on {p.device.type}")


def _bias_correction(beta: float, steps: list[Tensor]) -> list[Tensor]:
    """1 - beta^t for each step count t."""
    powers = torch._foreach_pow(beta, steps)
    torch._foreach_neg_(powers)
    torch._foreach_add_(powers, 1)
    return powers


class SignSGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float | Tensor = 1e-2, weight_decay: float = 0.1):
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"invalid SignSGD settings lr={lr}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr = group["lr"]
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            signs = torch._foreach_sign([p.grad for p in params])
            torch._foreach_mul_(signs, lr)
            torch._foreach_sub_(params, signs)
        return loss


def make_optimizers(model: nn.Module, *, lr: float, weight_decay: float,
                    betas: tuple[float, float], task_lr: float, task_weight_decay: float,
                    fused: bool = False) -> tuple[AdamATan2, SignSGD]:
    """AdamATan2 over the network, SignSGD over the task embedding (empty if there is none)."""
    task: list[Tensor] = []
    rest: list[Tensor] = []
    for name, p in model.named_parameters():
        (task if name == "task_embedding" else rest).append(p)
    return (AdamATan2(rest, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused),
            SignSGD([{"params": task}], lr=task_lr, weight_decay=task_weight_decay))


def set_lr(optimizer: AdamATan2, task_optimizer: SignSGD, lr: float | Tensor, *, base_lr: float,
           task_lr: float) -> None:
    """Apply the scheduled lr (a float, or a 0-d tensor computed on the device); the task
    token's lr follows the same schedule, as in HRM."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    for group in task_optimizer.param_groups:
        group["lr"] = task_lr * (lr / base_lr) if base_lr > 0 else task_lr
