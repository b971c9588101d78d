"""RoPE attention with its backward in Triton, for the blocks that carry gradient.

A training segment's last L and H updates carry gradient, so their 8 blocks run as PyTorch ops
(the gradient-free ones run in `fused.py`'s kernel). Their attention is a chain of small passes
over tensors of the whole batch: RoPE of q and k, SDPA's forward; backward, SDPA's (cuDNN's
flash backward at the paper's head size of 32, ~29 us a call on an H100, for ~2.5 GFLOP), RoPE's,
and the stack of dq, dk, dv into the gradient at qkv. `rope_attention` takes the qkv
projection as it comes, (B, S, 3·D), and writes the attention output as o_proj reads it,
(B, S, D): one kernel forward (RoPE inside, an online softmax over key tiles, as flash
attention) and two backward (dk and dv by key tile, dq by query tile, as flash attention 2
without atomics), each writing its share of the gradient at qkv with RoPE's backward applied.

RoPE's backward needs each feature's partner (rotate_half's) in the gradient, a permutation of
a tile's columns that Triton has no operation for; so the kernels also form the rotated keys
(queries) with their columns permuted, and the permuted gradient is one more matmul with them.
Numerics are the eager block's: q and k rotated and rounded to the compute dtype as eager
rounds them, the softmax and the accumulations in fp32 (P and dS rounded to the compute dtype
for their matmuls, as flash attention does), each gradient rounded where eager rounds it.

`TRITON_INTERPRET=1` runs the kernels on a CPU (the tests).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from hrm_agent.models.fused import (INTERPRET, _mm, _partner, _round, _softmax_step,
                                     require_kernel_device)

BLOCK_M, BLOCK_N = 64, 64  # query rows, key rows of a program's tiles
# Pipeline stages of the tile loops: 2 copies the next tile in while this one computes, which
# is all a loop of two or three tiles needs; Triton's default 3 would take 1.5x the shared
# memory (compiled for sm_90: 89 KB for the dk, dv kernel, two programs per SM, against 58 KB
# and three).
STAGES = 2


@triton.jit
def _table(t_ptr, rows, cols, S: tl.constexpr, HD: tl.constexpr, DT: tl.constexpr):
    """A RoPE table (S, HD) at `rows` and head features `cols`, rounded to the compute dtype
    (eager casts the tables to it)."""
    t = tl.load(t_ptr + rows[:, None] * HD + cols[None, :], mask=(rows < S)[:, None], other=0.0)
    return _round(t.to(tl.float32), DT)


@triton.jit
def _load(ptr, base, rows, cols, S: tl.constexpr, LD: tl.constexpr):
    """Rows `rows` (zeros past S), columns `cols` of a (S, LD) slab at ptr + base, in fp32."""
    x = tl.load(ptr + base + rows[:, None] * LD + cols[None, :], mask=(rows < S)[:, None],
                other=0.0)
    return x.to(tl.float32)


@triton.jit
def _rotated(qkv_ptr, base, rows, cols, col0, cos_ptr, sin_ptr, S: tl.constexpr,
             HD: tl.constexpr, D: tl.constexpr, DT: tl.constexpr):
    """layers.rotate of the head whose features start at qkv column col0, at head features
    `cols`: x·cos + x[partner]·sin, each product and the sum rounded as eager rounds them.
    `cols` = _partner(arange(HD)) gives the rotated tile with its columns permuted."""
    x = _load(qkv_ptr, base, rows, col0 + cols, S, 3 * D)
    x_partner = _load(qkv_ptr, base, rows, col0 + _partner(cols, HD), S, 3 * D)
    cos, sin = _table(cos_ptr, rows, cols, S, HD, DT), _table(sin_ptr, rows, cols, S, HD, DT)
    return _round(_round(x * cos, DT) + _round(x_partner * sin, DT), DT)


@triton.jit
def _unrotate(grad, grad_partner, rows, j, cos_ptr, sin_ptr, S: tl.constexpr, HD: tl.constexpr,
              DT: tl.constexpr):
    """RoPE's backward: the gradient at x from the one at rotate(x) (`grad`, rounded to the
    compute dtype as SDPA returns it) and the same with its columns permuted: x[e] enters
    rotate(x)[e] times cos[e] and rotate(x)[partner(e)] times sin[partner(e)]."""
    cos = _table(cos_ptr, rows, j, S, HD, DT)
    sin_partner = _table(sin_ptr, rows, _partner(j, HD), S, HD, DT)
    return _round(_round(_round(grad, DT) * cos, DT)
                  + _round(_round(grad_partner, DT) * sin_partner, DT), DT)


@triton.jit
def _sequence_and_head(S: tl.constexpr, HEADS: tl.constexpr, D: tl.constexpr):
    """Program axis 0, b·HEADS + h: (it, b, h, sequence b's offset in qkv, and in the output)."""
    bh = tl.program_id(0)
    b = bh // HEADS
    return bh, b, bh % HEADS, b.to(tl.int64) * S * 3 * D, b.to(tl.int64) * S * D


@triton.jit
def _forward_kernel(qkv_ptr, cos_ptr, sin_ptr, out_ptr, lse_ptr, sm_scale, S: tl.constexpr,
                    HEADS: tl.constexpr, HD: tl.constexpr, IEEE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (b·HEADS + h, m): head h's attention for query rows [m·BLOCK_M, (m+1)·BLOCK_M)
    of sequence b; writes its output and the rows' log-sum-exp of scores (the backward's P)."""
    DT: tl.constexpr = qkv_ptr.dtype.element_ty
    D: tl.constexpr = HEADS * HD
    bh, b, h, base, out_base = _sequence_and_head(S, HEADS, D)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    j = tl.arange(0, HD)
    q = _rotated(qkv_ptr, base, rows, j, h * HD, cos_ptr, sin_ptr, S, HD, D, DT)
    top = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)
    out = tl.zeros((BLOCK_M, HD), dtype=tl.float32)
    for n0 in tl.range(0, S, BLOCK_N):
        keys = n0 + tl.arange(0, BLOCK_N)
        k = _rotated(qkv_ptr, base, keys, j, D + h * HD, cos_ptr, sin_ptr, S, HD, D, DT)
        v = _load(qkv_ptr, base, keys, 2 * D + h * HD + j, S, 3 * D)
        top, total, out = _softmax_step(q, k, v, keys, top, total, out, sm_scale, S, DT, IEEE)
    mask = rows < S
    tl.store(out_ptr + out_base + rows[:, None] * D + h * HD + j[None, :],
             (out / total[:, None]).to(DT), mask=mask[:, None])
    tl.store(lse_ptr + bh.to(tl.int64) * S + rows, top + tl.log(total), mask=mask)


@triton.jit
def _p_and_ds(q, k, v, do, delta, lse, keys, sm_scale, S: tl.constexpr, DT: tl.constexpr,
              IEEE: tl.constexpr):
    """For query tile q (its output gradient do, delta = rowsum(do·o) and lse) against key tile
    (k, v): the attention probabilities P and the gradient at the scores, dS = P·(dP - delta)."""
    scores = _mm(q, tl.trans(k), DT, IEEE) * sm_scale
    p = tl.where((keys < S)[None, :], tl.exp(scores - lse[:, None]), 0.0)
    return p, p * (_mm(do, tl.trans(v), DT, IEEE) - delta[:, None])


@triton.jit
def _query_tile(qkv_ptr, out_ptr, dout_ptr, lse_ptr, cos_ptr, sin_ptr, base, out_base, bh, h,
                rows, S: tl.constexpr, HEADS: tl.constexpr, HD: tl.constexpr, DT: tl.constexpr):
    """A query tile's rotated queries (also with permuted columns), output gradient, delta and
    lse (zeros past S: rows that contribute nothing)."""
    D: tl.constexpr = HEADS * HD
    j = tl.arange(0, HD)
    q = _rotated(qkv_ptr, base, rows, j, h * HD, cos_ptr, sin_ptr, S, HD, D, DT)
    q_partner = _rotated(qkv_ptr, base, rows, _partner(j, HD), h * HD, cos_ptr, sin_ptr, S, HD,
                         D, DT)
    do = _load(dout_ptr, out_base, rows, h * HD + j, S, D)
    delta = tl.sum(do * _load(out_ptr, out_base, rows, h * HD + j, S, D), axis=1)
    lse = tl.load(lse_ptr + bh.to(tl.int64) * S + rows, mask=rows < S, other=0.0)
    return q, q_partner, do, delta, lse


@triton.jit
def _backward_kv_kernel(qkv_ptr, cos_ptr, sin_ptr, out_ptr, dout_ptr, lse_ptr, dqkv_ptr, sm_scale,
                        S: tl.constexpr, HEADS: tl.constexpr, HD: tl.constexpr,
                        IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (b·HEADS + h, n): the gradient at head h's k and v for key rows
    [n·BLOCK_N, (n+1)·BLOCK_N) of sequence b, over all query tiles."""
    DT: tl.constexpr = qkv_ptr.dtype.element_ty
    D: tl.constexpr = HEADS * HD
    bh, b, h, base, out_base = _sequence_and_head(S, HEADS, D)
    keys = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    j = tl.arange(0, HD)
    k = _rotated(qkv_ptr, base, keys, j, D + h * HD, cos_ptr, sin_ptr, S, HD, D, DT)
    v = _load(qkv_ptr, base, keys, 2 * D + h * HD + j, S, 3 * D)
    dk = tl.zeros((BLOCK_N, HD), dtype=tl.float32)
    dk_partner = tl.zeros((BLOCK_N, HD), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, HD), dtype=tl.float32)
    for m0 in tl.range(0, S, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        q, q_partner, do, delta, lse = _query_tile(qkv_ptr, out_ptr, dout_ptr, lse_ptr, cos_ptr,
                                                   sin_ptr, base, out_base, bh, h, rows, S,
                                                   HEADS, HD, DT)
        p, ds = _p_and_ds(q, k, v, do, delta, lse, keys, sm_scale, S, DT, IEEE)
        dv += _mm(tl.trans(p), do, DT, IEEE)
        dk += _mm(tl.trans(ds), q, DT, IEEE)
        dk_partner += _mm(tl.trans(ds), q_partner, DT, IEEE)
    dk = _unrotate(dk * sm_scale, dk_partner * sm_scale, keys, j, cos_ptr, sin_ptr, S, HD, DT)
    dkv = dqkv_ptr + base + keys[:, None] * (3 * D) + D + h * HD + j[None, :]
    mask = (keys < S)[:, None]
    tl.store(dkv, dk.to(DT), mask=mask)
    tl.store(dkv + D, dv.to(DT), mask=mask)


@triton.jit
def _backward_q_kernel(qkv_ptr, cos_ptr, sin_ptr, out_ptr, dout_ptr, lse_ptr, dqkv_ptr, sm_scale,
                       S: tl.constexpr, HEADS: tl.constexpr, HD: tl.constexpr,
                       IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (b·HEADS + h, m): the gradient at head h's q for query rows
    [m·BLOCK_M, (m+1)·BLOCK_M) of sequence b, over all key tiles."""
    DT: tl.constexpr = qkv_ptr.dtype.element_ty
    D: tl.constexpr = HEADS * HD
    bh, b, h, base, out_base = _sequence_and_head(S, HEADS, D)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    j = tl.arange(0, HD)
    q, q_partner, do, delta, lse = _query_tile(qkv_ptr, out_ptr, dout_ptr, lse_ptr, cos_ptr,
                                               sin_ptr, base, out_base, bh, h, rows, S, HEADS,
                                               HD, DT)
    dq = tl.zeros((BLOCK_M, HD), dtype=tl.float32)
    dq_partner = tl.zeros((BLOCK_M, HD), dtype=tl.float32)
    for n0 in tl.range(0, S, BLOCK_N):
        keys = n0 + tl.arange(0, BLOCK_N)
        k = _rotated(qkv_ptr, base, keys, j, D + h * HD, cos_ptr, sin_ptr, S, HD, D, DT)
        k_partner = _rotated(qkv_ptr, base, keys, _partner(j, HD), D + h * HD, cos_ptr, sin_ptr,
                             S, HD, D, DT)
        v = _load(qkv_ptr, base, keys, 2 * D + h * HD + j, S, 3 * D)
        p, ds = _p_and_ds(q, k, v, do, delta, lse, keys, sm_scale, S, DT, IEEE)
        dq += _mm(ds, k, DT, IEEE)
        dq_partner += _mm(ds, k_partner, DT, IEEE)
    dq = _unrotate(dq * sm_scale, dq_partner * sm_scale, rows, j, cos_ptr, sin_ptr, S, HD, DT)
    tl.store(dqkv_ptr + base + rows[:, None] * (3 * D) + h * HD + j[None, :], dq.to(DT),
             mask=(rows < S)[:, None])


def _launch(kernel, qkv: Tensor, num_heads: int, *tensors: Tensor, block: int) -> None:
    b, s, d3 = qkv.shape
    head_dim = d3 // 3 // num_heads
    kernel[(b * num_heads, triton.cdiv(s, block))](
        qkv, *tensors, 1.0 / math.sqrt(head_dim), S=s, HEADS=num_heads, HD=head_dim,
        IEEE=qkv.dtype == torch.float32 or INTERPRET, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
        num_warps=4, num_stages=STAGES)


def check(qkv: Tensor, cos: Tensor, num_heads: int) -> None:
    """A ValueError naming what the kernels cannot run: they need a power-of-two head size
    >= 16 and a RoPE table row per position."""
    b, s, d3 = qkv.shape
    head_dim = d3 // 3 // num_heads if d3 % (3 * num_heads) == 0 else 0
    if head_dim < 16 or head_dim & (head_dim - 1) or cos.shape[0] < s or cos.shape[-1] != head_dim:
        raise ValueError(f"the fused attention needs a power-of-two head size >= 16 and RoPE "
                         f"tables (positions, head size): got qkv {tuple(qkv.shape)} with "
                         f"{num_heads} heads, tables {tuple(cos.shape)}")


@torch.library.custom_op("hrm_agent::rope_attention", mutates_args=())
def rope_attention(qkv: Tensor, cos: Tensor, sin: Tensor, num_heads: int) -> tuple[Tensor, Tensor]:
    """Attention of `layers.Attention` from its qkv projection (B, S, 3·D), q and k rotated by
    the RoPE tables (positions, head size): the output (B, S, D), heads side by side, and the
    log-sum-exp of each row's scores (B, heads, S), fp32, which the backward uses."""
    check(qkv, cos, num_heads)
    b, s, d3 = qkv.shape
    qkv, cos, sin = qkv.contiguous(), cos.contiguous(), sin.contiguous()
    out = qkv.new_empty(b, s, d3 // 3)
    lse = torch.empty(b, num_heads, s, dtype=torch.float32, device=qkv.device)
    _launch(_forward_kernel, qkv, num_heads, cos, sin, out, lse, block=BLOCK_M)
    return out, lse


@rope_attention.register_fake
def _(qkv, cos, sin, num_heads):
    b, s, d3 = qkv.shape
    return qkv.new_empty(b, s, d3 // 3), qkv.new_empty(b, num_heads, s, dtype=torch.float32)


@torch.library.custom_op("hrm_agent::rope_attention_backward", mutates_args=())
def rope_attention_backward(qkv: Tensor, cos: Tensor, sin: Tensor, out: Tensor, lse: Tensor,
                            dout: Tensor, num_heads: int) -> Tensor:
    """The gradient at qkv from the one at `rope_attention`'s output."""
    qkv, cos, sin = qkv.contiguous(), cos.contiguous(), sin.contiguous()
    dqkv = torch.empty_like(qkv)
    tensors = (cos, sin, out.contiguous(), dout.contiguous(), lse.contiguous(), dqkv)
    _launch(_backward_kv_kernel, qkv, num_heads, *tensors, block=BLOCK_N)
    _launch(_backward_q_kernel, qkv, num_heads, *tensors, block=BLOCK_M)
    return dqkv


@rope_attention_backward.register_fake
def _(qkv, cos, sin, out, lse, dout, num_heads):
    return torch.empty_like(qkv)


def _setup_context(ctx, inputs, output) -> None:
    qkv, cos, sin, ctx.num_heads = inputs
    ctx.save_for_backward(qkv, cos, sin, *output)


def _backward(ctx, dout: Tensor, _dlse: Tensor | None) -> tuple[Tensor, None, None, None]:
    qkv, cos, sin, out, lse = ctx.saved_tensors
    return rope_attention_backward(qkv, cos, sin, out, lse, dout, ctx.num_heads), None, None, None


rope_attention.register_autograd(_backward, setup_context=_setup_context)


def attend(qkv: Tensor, cos: Tensor, sin: Tensor, num_heads: int) -> Tensor:
    """`rope_attention`'s output alone: what `layers.Attention` hands to o_proj."""
    return rope_attention(qkv, cos, sin, num_heads)[0]


def use_fused_attention(model: torch.nn.Module) -> None:
    """Every attention of `model` runs as `attend`; a ValueError, naming why, where the kernels
    cannot run it."""
    from hrm_agent.models.layers import Attention

    for module in model.modules():
        if isinstance(module, Attention):
            w = module.qkv_proj.weight
            require_kernel_device(w, "the fused attention needs")
            check(w.new_empty(1, 1, w.shape[0]), w.new_empty(1, module.head_dim), module.num_heads)
            module.fused = attend
