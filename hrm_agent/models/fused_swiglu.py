"""The SwiGLU's hidden layer in Triton, so that its 2W-wide gate/up output is never stored.

A training segment's last L and H updates carry gradient, so their 8 blocks run as PyTorch ops
(the gradient-free ones run in `fused.py`'s kernel). Their SwiGLU writes gate/up (T x 512 at
hidden 64, 32 MB for the paper's batch in bf16), reads it back to form h = silu(gate)·up, and
reads it once more in the backward: the largest memory transfers of those passes, which are
bound by memory traffic. `swiglu_hidden` forms h from x in one kernel and saves only x; its
backward recomputes gate and up from x in the kernel that forms their gradient. The gradient's
matmuls (dx, dW) and the down projection stay as they were. Numerics are the eager bf16
SwiGLU's: gate, up, silu(gate), h and each gradient rounded to the compute dtype where eager
rounds them, fp32 in between.

`TRITON_INTERPRET=1` runs both kernels on a CPU (the tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from hrm_agent.models.fused import (INTERPRET, _load_t, _mm, _round, checked,
                                     require_kernel_device)

BLOCK_M, BLOCK_W = 64, 64  # a program: 64 tokens by 64 of the hidden width


@triton.jit
def _gate_up(x_ptr, w_ptr, rows, cols, T, D: tl.constexpr, W: tl.constexpr, DT: tl.constexpr,
             IEEE: tl.constexpr):
    """gate and up at `rows` (tokens past T read as zeros) and hidden columns `cols`, rounded."""
    d = tl.arange(0, D)
    x = tl.load(x_ptr + rows[:, None] * D + d[None, :], mask=(rows < T)[:, None], other=0.0)
    x = x.to(tl.float32)
    gate = _round(_mm(x, _load_t(w_ptr, 0, cols, d, D), DT, IEEE), DT)
    up = _round(_mm(x, _load_t(w_ptr, W, cols, d, D), DT, IEEE), DT)
    return gate, up


@triton.jit
def _hidden_kernel(x_ptr, w_ptr, h_ptr, T, D: tl.constexpr, W: tl.constexpr,
                   IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    """h = silu(gate)·up on a tile of tokens by hidden columns."""
    DT: tl.constexpr = x_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    gate, up = _gate_up(x_ptr, w_ptr, rows, cols, T, D, W, DT, IEEE)
    h = _round(_round(gate * tl.sigmoid(gate), DT) * up, DT)
    tl.store(h_ptr + rows[:, None] * W + cols[None, :], h.to(DT), mask=(rows < T)[:, None])


@triton.jit
def _hidden_backward_kernel(x_ptr, w_ptr, dh_ptr, dgu_ptr, T, D: tl.constexpr, W: tl.constexpr,
                            IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    """The gradient at gate and up from the one at h, as autograd forms it: d_up = dh·silu(gate),
    d_gate = silu'(gate)·(dh·up), with gate and up recomputed."""
    DT: tl.constexpr = x_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    gate, up = _gate_up(x_ptr, w_ptr, rows, cols, T, D, W, DT, IEEE)
    mask = (rows < T)[:, None]
    dh = tl.load(dh_ptr + rows[:, None] * W + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(gate)
    d_up = _round(dh * _round(gate * sig, DT), DT)
    d_gate = _round(_round(dh * up, DT) * (sig * (1.0 + gate * (1.0 - sig))), DT)
    dgu = dgu_ptr + rows[:, None] * (2 * W) + cols[None, :]
    tl.store(dgu, d_gate.to(DT), mask=mask)
    tl.store(dgu + W, d_up.to(DT), mask=mask)


def _launch(kernel, x: Tensor, w: Tensor, *tensors: Tensor) -> None:
    t, d = x.shape
    width = w.shape[0] // 2
    with checked(x, lambda: f"the SwiGLU's {kernel.fn.__name__} (x {tuple(x.shape)} {x.dtype})"):
        kernel[(triton.cdiv(t, BLOCK_M), width // BLOCK_W)](
            x, w, *tensors, t, D=d, W=width, IEEE=x.dtype == torch.float32 or INTERPRET,
            BLOCK_M=BLOCK_M, BLOCK_W=BLOCK_W, num_warps=4)


def _check(x: Tensor, w: Tensor) -> None:
    d, width = x.shape[-1], w.shape[0] // 2
    if w.dtype != x.dtype or w.shape != (2 * width, d) or width % BLOCK_W or d < 16 or d & (d - 1):
        raise ValueError(f"the fused SwiGLU needs a gate_up weight (2W, D) in x's dtype, W a "
                         f"multiple of {BLOCK_W} and D a power of two >= 16: got x "
                         f"{tuple(x.shape)} {x.dtype}, w {tuple(w.shape)} {w.dtype}")


@torch.library.custom_op("hrm_agent::swiglu_hidden", mutates_args=())
def swiglu_hidden(x: Tensor, w: Tensor) -> Tensor:
    """silu(x·W_gate^T)·(x·W_up^T) for x (..., D) and the SwiGLU's gate_up weight w (2W, D), in
    x's dtype (an opaque op to torch.compile, with its own backward)."""
    _check(x, w)
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    h = x2.new_empty(x2.shape[0], w.shape[0] // 2)
    _launch(_hidden_kernel, x2, w.contiguous(), h)
    return h.view(*x.shape[:-1], -1)


@swiglu_hidden.register_fake
def _(x, w):
    return x.new_empty(*x.shape[:-1], w.shape[0] // 2)


@torch.library.custom_op("hrm_agent::swiglu_hidden_backward", mutates_args=())
def swiglu_hidden_backward(x: Tensor, w: Tensor, dh: Tensor) -> Tensor:
    """The gradient at gate/up (..., 2W), from the one at `swiglu_hidden`'s output."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    dgu = x2.new_empty(x2.shape[0], w.shape[0])
    _launch(_hidden_backward_kernel, x2, w.contiguous(), dh.reshape(x2.shape[0], -1).contiguous(),
            dgu)
    return dgu.view(*x.shape[:-1], -1)


@swiglu_hidden_backward.register_fake
def _(x, w, dh):
    return x.new_empty(*x.shape[:-1], w.shape[0])


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, dh: Tensor) -> tuple[Tensor, Tensor]:
    """Through gate/up = x·w^T as a linear layer's backward: dx = dgu·w, dw = dgu^T·x."""
    x, w = ctx.saved_tensors
    dgu = swiglu_hidden_backward(x, w, dh)
    dw = dgu.reshape(-1, w.shape[0]).T @ x.reshape(-1, x.shape[-1])
    return dgu @ w, dw


swiglu_hidden.register_autograd(_backward, setup_context=_setup_context)


def use_fused_swiglu(model: torch.nn.Module) -> None:
    """Every SwiGLU of `model` forms its hidden layer with `swiglu_hidden`; a ValueError, naming
    why, where the kernels cannot run it."""
    from hrm_agent.models.layers import SwiGLU

    for module in model.modules():
        if isinstance(module, SwiGLU):
            w = module.gate_up_proj.weight
            require_kernel_device(w, "the fused SwiGLU needs")
            _check(w.new_empty(0, w.shape[1]), w)
            module.hidden = swiglu_hidden
