"""One Triton kernel per transformer block, for the HRM's gradient-free updates.

Most of a training step's work is forward passes without gradient: acting and the target's
forward run whole segments under no_grad, and every segment's updates but the last L and H
are gradient-free too (HRM's 1-step gradient). At hidden 64 these passes are bound by memory
traffic and launches, not FLOPs: a compiled block still runs ~9 kernels and writes every
intermediate to memory, the SwiGLU's 512-wide gate/up output the largest of them.
`fused_block_op` runs a whole block (`layers.Block`: attention with RoPE, the residual and
RMSNorm, the SwiGLU, the second residual and RMSNorm) in one kernel, one program per query
tile of a sequence, so only the block's input and output touch memory. Its numerics are the
eager block's: bf16 operands wherever eager rounds to bf16, fp32 accumulation, softmax and
norms (attention as flash attention computes it, with an online softmax); fp32 models run
fp32 ("ieee") dots. The weights come cast to the compute dtype once per segment (`block_weights`,
two kernels for all of them), as autocast casts them: read in bf16, they are half the bytes the
kernel's programs load (each program loads all of its block's ~64K weights).

Gradient-free only: it has no backward. `TRITON_INTERPRET=1` runs it on a CPU (the tests).
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager, nullcontext
from typing import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from hrm_agent.models.layers import ReasoningModule, RopeTables

RMS_EPS = tl.constexpr(1e-5)  # layers.rms_norm's
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton runs the kernel on the CPU
_INTERPRET = tl.constexpr(INTERPRET)


# "1": each of our kernels waits for the device before and after it runs, outside a CUDA graph
# capture (where waiting is not allowed), so that a fault names the kernel it surfaced in; CUDA
# reports a fault at some later call otherwise (on an H100, a run's first cuBLAS call once said
# CUBLAS_STATUS_INTERNAL_ERROR). The GPU job sets it for a run it retries after a failure on our
# kernels; it slows only what is not replayed from a graph.
CHECK_VAR = "HRM_AGENT_CHECK_KERNELS"
CHECK = os.environ.get(CHECK_VAR) == "1"


def checked(tensor: Tensor, name: Callable[[], str]):
    """A context for one launch of our kernel on `tensor`'s device: with `CHECK_VAR` set, a
    fault before or in it raises a RuntimeError naming `name()` (built only then)."""
    return _checking(tensor, name) if CHECK and tensor.is_cuda else nullcontext()


@contextmanager
def _checking(tensor: Tensor, name: Callable[[], str]):
    def wait(where: str) -> None:
        if torch.cuda.is_current_stream_capturing():
            return
        try:
            torch.cuda.synchronize(tensor.device)
        except RuntimeError as exc:
            raise RuntimeError(f"a CUDA fault {where} {name()}: {exc}") from None

    wait("before")
    yield
    wait("in")


def require_kernel_device(tensor: Tensor, subject: str) -> None:
    """A ValueError unless `tensor` is where our Triton kernels run: on CUDA, or anywhere under
    Triton's interpreter. `subject` starts the message, e.g. "the fused blocks need"."""
    if not (tensor.is_cuda or INTERPRET):
        raise ValueError(f"{subject} a CUDA device (or TRITON_INTERPRET=1), the model is on "
                         f"{tensor.device.type}")


@triton.jit
def _round(x, DT: tl.constexpr):
    """x (fp32) rounded to the compute dtype, where the eager block rounds: to nearest even, as
    CUDA converts (Triton 3.6's interpreter truncates, so there the bits are rounded by hand)."""
    if DT == tl.float32:
        return x
    if _INTERPRET and DT == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    return x.to(DT).to(tl.float32)


@triton.jit
def _rms(x, D: tl.constexpr, DT: tl.constexpr):
    """layers.rms_norm on fp32 rows, rounded to the compute dtype."""
    return _round(x * tl.rsqrt(tl.sum(x * x, axis=1)[:, None] / D + RMS_EPS), DT)


@triton.jit
def _mm(a, b, DT: tl.constexpr, IEEE: tl.constexpr):
    """a·b, the operands rounded to the compute dtype, accumulated in fp32. IEEE: as fp32
    "ieee" dots of the rounded operands, whose products are exact: the same sums (fp32 models;
    and Triton's interpreter, whose bf16 dots are wrong in 3.6)."""
    if IEEE:
        return tl.dot(_round(a.to(tl.float32), DT), _round(b.to(tl.float32), DT),
                      input_precision="ieee")
    return tl.dot(a.to(DT), b.to(DT))


@triton.jit
def _load_t(w_ptr, row0, rows, k, ld: tl.constexpr):
    """The transposed tile W[row0 + rows, k]^T (K, N) of a row-major weight with row length ld."""
    return tl.load(w_ptr + (row0 + rows)[None, :] * ld + k[:, None])


@triton.jit
def _rotate(q, cos, sin, HD: tl.constexpr, DT: tl.constexpr):
    """RoPE of projections q (rows, heads·HD), as layers.rotate: q times cos plus
    rotate_half(q) (each head's two halves swapped) times the signed sin, each product rounded
    as eager rounds it. The swap is a reshape and permute, which Triton builds for sm_90 from
    register moves, no shared memory (a second matmul, through the weight rows of each
    feature's partner, took 16 of the reference tiling's 68 tensor-core instructions)."""
    M: tl.constexpr = q.shape[0]
    N: tl.constexpr = q.shape[1]
    first, second = tl.split(tl.permute(tl.reshape(q, (M, N // HD, 2, HD // 2)), (0, 1, 3, 2)))
    swapped = tl.reshape(tl.permute(tl.join(second, first), (0, 1, 3, 2)), (M, N))
    return _round(_round(q * cos, DT) + _round(swapped * sin, DT), DT)


@triton.jit
def _projection(x, w_ptr, row0, c, d, D: tl.constexpr, DT: tl.constexpr, IEEE: tl.constexpr):
    """x·W[row0 + c]^T, rounded to the compute dtype as a Linear's output is."""
    return _round(_mm(x, _load_t(w_ptr, row0, c, d, D), DT, IEEE), DT)


@triton.jit
def _two_projections(x, w_ptr, row0, gap, N: tl.constexpr, d, D: tl.constexpr,
                     DT: tl.constexpr, IEEE: tl.constexpr):
    """`_projection`s onto rows row0 + [0, N) and row0 + gap + [0, N) of W, as one matmul 2N
    wide split in registers: half the tensor-core instructions of two, each twice as wide."""
    c = tl.arange(0, 2 * N)
    both = _projection(x, w_ptr, row0, c + (c >= N) * (gap - N), d, D, DT, IEEE)
    return tl.split(tl.permute(tl.reshape(both, (both.shape[0], 2, N)), (0, 2, 1)))


@triton.jit
def _load_rows(x_ptr, inj_ptr, base, rows, d, S: tl.constexpr, D: tl.constexpr,
               HAS_INJ: tl.constexpr, DT: tl.constexpr):
    """The block's input at `rows` of one sequence (B, S, D) (rows past S are zeros), in fp32:
    x, or x + inj rounded as the eager sum."""
    mask = (rows < S)[:, None]
    offsets = base + rows[:, None] * D + d[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_INJ:
        x = _round(x + tl.load(inj_ptr + offsets, mask=mask, other=0.0), DT)
    return x


@triton.jit
def _load_table(t_ptr, rows, c, S: tl.constexpr, HD: tl.constexpr):
    """A RoPE table (S, HD) at `rows` and features c (of any head: the tables are per feature
    of a head)."""
    c = c % HD
    return tl.load(t_ptr + rows[:, None] * HD + c[None, :], mask=(rows < S)[:, None], other=0.0)


@triton.jit
def _softmax_step(q, k, v, keys, top, total, out, sm_scale, S: tl.constexpr, DT: tl.constexpr,
                  IEEE: tl.constexpr):
    """Queries q against one tile of keys k (at `keys`; past S masked) and values v, as flash
    attention's online softmax: the running max of the scores, the sum of their exponentials
    and the output's numerator, each rescaled to the new max."""
    scores = _mm(q, tl.trans(k), DT, IEEE) * sm_scale
    scores = tl.where((keys < S)[None, :], scores, float("-inf"))
    new_top = tl.maximum(top, tl.max(scores, axis=1))
    p = tl.exp(scores - new_top[:, None])
    scale = tl.exp(top - new_top)
    return new_top, total * scale + tl.sum(p, axis=1), out * scale[:, None] + _mm(p, v, DT, IEEE)


@triton.jit
def _attention_by_head(x, x_ptr, inj_ptr, base, rows, wqkv_ptr, wo_ptr, cos_ptr, sin_ptr,
                       sm_scale, S: tl.constexpr, D: tl.constexpr, HEADS: tl.constexpr,
                       HAS_INJ: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, DT: tl.constexpr):
    """Attention of query rows `rows` (their input x), head by head, each head's output
    projected and summed (o_proj)."""
    HD: tl.constexpr = D // HEADS
    d = tl.arange(0, D)
    j = tl.arange(0, HD)
    cos_q, sin_q = _load_table(cos_ptr, rows, j, S, HD), _load_table(sin_ptr, rows, j, S, HD)
    attn = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    for h in tl.static_range(HEADS):
        q = _rotate(_projection(x, wqkv_ptr, h * HD, j, d, D, DT, IEEE), cos_q, sin_q, HD, DT)
        top = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        total = tl.zeros((BLOCK_M,), dtype=tl.float32)
        out = tl.zeros((BLOCK_M, HD), dtype=tl.float32)
        for n0 in tl.range(0, S, BLOCK_N):
            keys = n0 + tl.arange(0, BLOCK_N)
            x_k = _load_rows(x_ptr, inj_ptr, base, keys, d, S, D, HAS_INJ, DT)
            cos_k, sin_k = _load_table(cos_ptr, keys, j, S, HD), _load_table(sin_ptr, keys, j, S, HD)
            k, v = _two_projections(x_k, wqkv_ptr, D + h * HD, D, HD, d, D, DT, IEEE)
            k = _rotate(k, cos_k, sin_k, HD, DT)
            top, total, out = _softmax_step(q, k, v, keys, top, total, out, sm_scale, S, DT, IEEE)
        attn += _mm(out / total[:, None], _load_t(wo_ptr, 0, d, h * HD + j, D), DT, IEEE)
    return attn


@triton.jit
def _attention_all_heads(x, x_ptr, inj_ptr, base, rows, wqkv_ptr, wo_ptr, cos_ptr, sin_ptr,
                         sm_scale, S: tl.constexpr, D: tl.constexpr, HEADS: tl.constexpr,
                         HAS_INJ: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, DT: tl.constexpr):
    """`_attention_by_head`'s attention with Q, K, V and o_proj for all heads in one matmul
    each, and one pass over the keys: fewer, wider matmuls in the program's chain of dependent
    ones, for more registers. A head's scores are q, zero outside the head's features, times k;
    its p·v is kept in its features; its online-softmax state is a column of (rows, HEADS)."""
    HD: tl.constexpr = D // HEADS
    d = tl.arange(0, D)
    head = (d // HD)[None, :]
    hid = tl.arange(0, HEADS)[None, :]
    cos_q, sin_q = _load_table(cos_ptr, rows, d, S, HD), _load_table(sin_ptr, rows, d, S, HD)
    q = _rotate(_projection(x, wqkv_ptr, 0, d, d, D, DT, IEEE), cos_q, sin_q, HD, DT)
    top = tl.full((BLOCK_M, HEADS), float("-inf"), dtype=tl.float32)
    total = tl.zeros((BLOCK_M, HEADS), dtype=tl.float32)
    out = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    for n0 in tl.range(0, S, BLOCK_N):
        keys = n0 + tl.arange(0, BLOCK_N)
        x_k = _load_rows(x_ptr, inj_ptr, base, keys, d, S, D, HAS_INJ, DT)
        cos_k, sin_k = _load_table(cos_ptr, keys, d, S, HD), _load_table(sin_ptr, keys, d, S, HD)
        k, v = _two_projections(x_k, wqkv_ptr, D, D, D, d, D, DT, IEEE)
        k = _rotate(k, cos_k, sin_k, HD, DT)
        for h in tl.static_range(HEADS):
            scores = _mm(tl.where(head == h, q, 0.0), tl.trans(k), DT, IEEE) * sm_scale
            scores = tl.where((keys < S)[None, :], scores, float("-inf"))
            top_h = tl.sum(tl.where(hid == h, top, 0.0), axis=1)
            new_top = tl.maximum(top_h, tl.max(scores, axis=1))
            p = tl.exp(scores - new_top[:, None])
            scale = tl.exp(top_h - new_top)
            total = tl.where(hid == h, total * scale[:, None] + tl.sum(p, axis=1)[:, None], total)
            out = tl.where(head == h, out * scale[:, None] + _mm(p, v, DT, IEEE), out)
            top = tl.where(hid == h, new_top[:, None], top)
    for h in tl.static_range(HEADS):
        out = tl.where(head == h, out / tl.sum(tl.where(hid == h, total, 0.0), axis=1)[:, None], out)
    return _mm(out, _load_t(wo_ptr, 0, d, d, D), DT, IEEE)


# (query rows, key rows, warps, stages, registers per thread or 0 for the compiler's choice,
# heads at once: 1 or 0). Stages: how deep Triton pipelines the key and SwiGLU loops (weights
# and keys copied to shared memory ahead of their use; 1: not at all, but fewer registers and
# half the shared memory). Heads at once: `_attention_all_heads` (else `_attention_by_head`).
# The reference: 64x64, 4 warps, as an H100's autotuner chose over 128x128/8 and 128x64/8 for
# both bf16 shapes, at Triton's default 3 stages; ~230 registers and 64-72 KB of shared memory,
# so two programs per SM. 128x128 broke on the H100 at batch 256 (an illegal memory access, or
# NaN), so nothing is timed inside the training loop; `bench fused` times tilings offline.
TILING = (64, 64, 4, 3, 0, 0)
# The tiling the kernel runs at, when not TILING: "query rows,key rows,warps,stages,registers,
# heads at once". The GPU job sets it to the fastest of its `bench fused` whose blocks are
# TILING's.
TILING_VAR = "HRM_AGENT_FUSED_TILING"


def parse_tiling(text: str) -> tuple[int, int, int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 6 or not all(part.strip().isdigit() for part in parts):
        raise ValueError(f"{TILING_VAR}={text!r}: expected 'query rows,key rows,warps,stages,"
                         "registers,heads at once', e.g. '64,64,4,3,0,0'")
    return tuple(int(part) for part in parts)


IN_USE = parse_tiling(os.environ[TILING_VAR]) if os.environ.get(TILING_VAR) else TILING


@triton.jit
def _block_kernel(x_ptr, inj_ptr, out_ptr, wqkv_ptr, wo_ptr, wgu_ptr, wd_ptr, cos_ptr, sin_ptr,
                  sm_scale, S: tl.constexpr, D: tl.constexpr, HEADS: tl.constexpr,
                  W: tl.constexpr, HAS_INJ: tl.constexpr, IEEE: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ALL_HEADS: tl.constexpr):
    """Program (b, m): the block on query rows [m·BLOCK_M, (m + 1)·BLOCK_M) of sequence b of x
    (B, S, D), plus inj first when HAS_INJ (the reasoning module's input injection, fused into
    its first block). Attention over keys in tiles of BLOCK_N with an online softmax (as flash
    attention), K and V computed from the input tile by tile (a maze sequence's query tiles
    each compute them: in parallel programs, not one after another); head by head, or all
    heads at once (ALL_HEADS)."""
    DT: tl.constexpr = x_ptr.dtype.element_ty
    base = tl.program_id(0).to(tl.int64) * S * D
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, D)
    x = _load_rows(x_ptr, inj_ptr, base, rows, d, S, D, HAS_INJ, DT)
    if ALL_HEADS:
        attn = _attention_all_heads(x, x_ptr, inj_ptr, base, rows, wqkv_ptr, wo_ptr, cos_ptr,
                                    sin_ptr, sm_scale, S, D, HEADS, HAS_INJ, IEEE, BLOCK_M,
                                    BLOCK_N, DT)
    else:
        attn = _attention_by_head(x, x_ptr, inj_ptr, base, rows, wqkv_ptr, wo_ptr, cos_ptr,
                                  sin_ptr, sm_scale, S, D, HEADS, HAS_INJ, IEEE, BLOCK_M, BLOCK_N,
                                  DT)

    x = _rms(_round(x + _round(attn, DT), DT), D, DT)

    # SwiGLU in 64-wide slices of its hidden width (a multiple of 256), never written to memory;
    # a loop, not unrolled, so that Triton pipelines the slices' weights into shared memory
    mlp = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    for w0 in tl.range(0, W, 64):
        cols = w0 + tl.arange(0, 64)
        gate, up = _two_projections(x, wgu_ptr, w0, W, 64, d, D, DT, IEEE)
        mlp += _mm(_round(gate * tl.sigmoid(gate), DT) * up, _load_t(wd_ptr, 0, d, cols, W), DT, IEEE)
    x = _rms(_round(x + _round(mlp, DT), DT), D, DT)
    tl.store(out_ptr + base + rows[:, None] * D + d[None, :], x.to(DT), mask=(rows < S)[:, None])


def launch(x: Tensor, inj: Tensor | None, wqkv: Tensor, wo: Tensor, wgu: Tensor, wd: Tensor,
           cos: Tensor, sin: Tensor, num_heads: int, tiling: tuple[int, ...] = TILING) -> Tensor:
    """`layers.Block` on x (B, S, D) (after adding `inj`, when given): the kernel's launch at
    `tiling` (query rows, key rows, warps, stages, register cap or 0, heads at once)."""
    b, s, d = x.shape
    block_m, block_n, warps, stages, registers, all_heads = tiling
    x, wqkv, wo, wgu, wd = (t.contiguous() for t in (x, wqkv, wo, wgu, wd))
    out = torch.empty_like(x)
    with checked(x, lambda: f"the block kernel (tiling {tiling}, x {tuple(x.shape)} {x.dtype}, "
                            f"{'with' if inj is not None else 'no'} injection)"):
        _block_kernel[(b, triton.cdiv(s, block_m))](
            x, x if inj is None else inj.contiguous(), out, wqkv, wo, wgu, wd, cos.contiguous(),
            sin.contiguous(), 1.0 / math.sqrt(d // num_heads), S=s, D=d, HEADS=num_heads,
            W=wd.shape[1], HAS_INJ=inj is not None, IEEE=x.dtype == torch.float32 or INTERPRET,
            BLOCK_M=block_m, BLOCK_N=block_n, ALL_HEADS=bool(all_heads), num_warps=warps,
            num_stages=stages, **({"maxnreg": registers} if registers else {}))
    return out


@torch.library.custom_op("hrm_agent::fused_block", mutates_args=())
def fused_block_op(x: Tensor, inj: Tensor | None, wqkv: Tensor, wo: Tensor, wgu: Tensor,
                   wd: Tensor, cos: Tensor, sin: Tensor, num_heads: int) -> Tensor:
    """`launch` at the tiling in use, gradient-free: an opaque op to torch.compile, so that a
    compiled segment calls the kernel as is."""
    return launch(x, inj, wqkv, wo, wgu, wd, cos, sin, num_heads, IN_USE)


@fused_block_op.register_fake
def _(x, inj, wqkv, wo, wgu, wd, cos, sin, num_heads):
    return torch.empty_like(x)


def unsupported(module: ReasoningModule) -> str | None:
    """Why `fused_module` cannot run `module`, or None: Triton's tiles need power-of-two widths
    of at least 16 (the SwiGLU's, a multiple of 256, always is one)."""
    attn = module.layers[0].self_attn
    for name, n in (("hidden_size", attn.o_proj.in_features), ("head size", attn.head_dim)):
        if n < 16 or n & (n - 1):
            return f"the fused blocks need a power-of-two {name} >= 16, got {n}"
    return None


def _weights(block) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    attn, mlp = block.self_attn, block.mlp
    return attn.qkv_proj.weight, attn.o_proj.weight, mlp.gate_up_proj.weight, mlp.down_proj.weight


@torch.library.custom_op("hrm_agent::flat_cast", mutates_args=())
def flat_cast(tensors: list[Tensor], dtype: torch.dtype) -> Tensor:
    """`tensors` flattened, concatenated and cast to `dtype`: two kernels however many there
    are (cast one by one, each would be a kernel of its own)."""
    return torch.cat([t.reshape(-1) for t in tensors]).to(dtype)


@flat_cast.register_fake
def _(tensors, dtype):
    return tensors[0].new_empty(sum(t.numel() for t in tensors), dtype=dtype)


def block_weights(modules, dtype: torch.dtype) -> list[list[tuple[Tensor, ...]]]:
    """Per module of `modules`, per block, its kernel weights (wqkv, wo, wgu, wd) in `dtype`:
    views of one cast copy of them all, or the weights themselves when they are in `dtype`."""
    weights = [_weights(block) for module in modules for block in module.layers]
    flat = [w for ws in weights for w in ws]
    if any(w.dtype != dtype for w in flat):
        parts = flat_cast(flat, dtype).split([w.numel() for w in flat])
        cast = iter(part.view(w.shape) for part, w in zip(parts, flat))
        weights = [tuple(next(cast) for _ in ws) for ws in weights]
    blocks = iter(weights)
    return [[next(blocks) for _ in module.layers] for module in modules]


def block_args(block, rope: RopeTables, weights: tuple[Tensor, ...] | None = None) -> tuple:
    """What `launch` (and `fused_block_op`) take after x and inj, for one `layers.Block` (its
    weights as given, e.g. by `block_weights`, else its fp32 masters)."""
    return (*(weights or _weights(block)), rope.cos, rope.sin, block.self_attn.num_heads)


def fused_module(module: ReasoningModule, z: Tensor, injection: Tensor, rope: RopeTables,
                 weights: list[tuple[Tensor, ...]] | None = None) -> Tensor:
    """`module(z, injection, rope)` without gradient, one kernel per block (`weights`: the
    module's from `block_weights`; cast here when not given)."""
    if weights is None:
        weights = block_weights([module], z.dtype)[0]
    for i, (block, w) in enumerate(zip(module.layers, weights)):
        z = fused_block_op(z, injection if i == 0 else None, *block_args(block, rope, w))
    return z
