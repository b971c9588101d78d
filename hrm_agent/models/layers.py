"""The transformer blocks HRM is made of (paper-notes §2.1): post-norm, RMSNorm without a scale,
RoPE self-attention, SwiGLU, no biases, truncated LeCun-normal init.

Attention picks its kernel at call time, because the same module may run on a CPU in a test
and on a GPU in training: flash-attn for CUDA fp16/bf16 tensors when installed, else PyTorch's
`scaled_dot_product_attention`, else the explicit math it stands for.
"""
from __future__ import annotations

import functools
import importlib.util
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BACKENDS = ("auto", "flash", "sdpa", "math")
# The std of a standard normal truncated to [-2, 2]; dividing by it makes the truncated init
# have exactly the requested std (as JAX's and the HRM reference's initialisers do).
_TRUNC_STD = 0.8796256610342398


def trunc_normal_(tensor: Tensor, std: float) -> Tensor:
    """Normal(0, std) truncated at two standard deviations, rescaled to keep `std`."""
    c = std / _TRUNC_STD
    return nn.init.trunc_normal_(tensor, mean=0.0, std=c, a=-2 * c, b=2 * c)


def lecun_linear(in_features: int, out_features: int) -> nn.Linear:
    """A bias-free Linear with LeCun init, std 1/sqrt(fan_in)."""
    layer = nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        trunc_normal_(layer.weight, 1.0 / math.sqrt(in_features))
    return layer


class _OneHotEmbedding(torch.autograd.Function):
    """`F.embedding(ids, weight)`, whose weight gradient is one product with the ids' one-hot
    (vocab x tokens) matrix: the sums of PyTorch's CUDA embedding backward, in another order
    (fp32), in ~4 kernels instead of its radix sort of the ids and segment sums (~10 kernels,
    ~0.1 ms of an H100's ~5-ms paper-profile step)."""

    @staticmethod
    def forward(ctx, weight: Tensor, ids: Tensor) -> Tensor:
        ctx.save_for_backward(ids)
        ctx.vocab = weight.shape[0]
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (ids,) = ctx.saved_tensors
        ids = ids.reshape(1, -1)
        one_hot = (torch.arange(ctx.vocab, device=ids.device)[:, None] == ids).to(grad.dtype)
        with torch.autocast(grad.device.type, enabled=False):  # the sums in the grad's dtype
            return one_hot @ grad.reshape(-1, grad.shape[-1]), None


def embedding(weight: Tensor, ids: Tensor) -> Tensor:
    """The rows of `weight` at `ids`; on CUDA with `_OneHotEmbedding`'s backward."""
    return _OneHotEmbedding.apply(weight, ids) if weight.is_cuda else F.embedding(ids, weight)


def rms_norm(x: Tensor, eps: float = 1e-5) -> Tensor:
    """RMSNorm without a learnable scale, computed in fp32 whatever the activation dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


@functools.cache
def flash_attn_available() -> bool:
    """Looked up once: attention asks on every call, and a lookup walks sys.path."""
    return importlib.util.find_spec("flash_attn") is not None


def select_backend(requested: str, x: Tensor) -> str:
    """The kernel `requested` resolves to for tensor `x` ('auto' prefers flash, then SDPA)."""
    if requested not in BACKENDS:
        raise ValueError(f"attention backend {requested!r} is not one of {', '.join(BACKENDS)}")
    flash_ok = (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
                and flash_attn_available())
    if requested == "flash" and not flash_ok:
        raise RuntimeError("attn_backend='flash' needs flash-attn installed and CUDA fp16/bf16 "
                           f"tensors (got {x.device.type} {x.dtype}); use 'auto'")
    if requested == "auto":
        return "flash" if flash_ok else "sdpa"
    return requested


def compile_kwargs(attn_backend: str, kwargs: dict) -> dict:
    """torch.compile's arguments for a network whose attention is `attn_backend`: under "math",
    inductor's pattern matcher is off. It would rewrite the explicit math into SDPA, the kernel
    that "math" is chosen to avoid: on a 2-core CPU in bf16 that rewrite made compiled training
    slower than eager, and without it compiled training is 1.7x faster (docs/measurements.md).
    Only inductor takes these options."""
    if attn_backend == "math" and kwargs.get("backend", "inductor") == "inductor":
        return {**kwargs, "options": {"pattern_matcher": False, **kwargs.get("options", {})}}
    return kwargs


def rope_inv_freq(pairs: int, theta: float) -> Tensor:
    """The RoPE frequency ladder theta^(-2i/(2·pairs)), i < pairs, for `pairs` rotary pairs."""
    return 1.0 / theta ** (torch.arange(0, 2 * pairs, 2, dtype=torch.float32) / (2 * pairs))


def sequence_angles(head_dim: int, positions: int, theta: float) -> Tensor:
    """1-D RoPE (HRM): position p rotates pair i by p·inv_freq_i; (positions, head_dim / 2)."""
    return torch.outer(torch.arange(positions, dtype=torch.float32),
                       rope_inv_freq(head_dim // 2, theta))


def grid_angles(head_dim: int, rows: int, cols: int, theta: float, task_token: bool) -> Tensor:
    """2-D RoPE over the observation grid (ours): the first half of each head's rotary pairs
    turn by the cell's row, the second half by its column, each half with the 1-D ladder of
    a head half as wide. Cell (r, c) sits at (r + 1, c + 1) and the task token, when there is
    one, at (0, 0): one step above and left of the grid, a place no cell shares."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head size divisible by 4, got {head_dim}")
    inv_freq = rope_inv_freq(head_dim // 4, theta)
    row = torch.arange(rows, dtype=torch.float32).repeat_interleave(cols) + 1
    col = torch.arange(cols, dtype=torch.float32).repeat(rows) + 1
    if task_token:
        row, col = torch.cat((torch.zeros(1), row)), torch.cat((torch.zeros(1), col))
    return torch.cat((torch.outer(row, inv_freq), torch.outer(col, inv_freq)), dim=-1)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate `x` (B, S, heads, head_dim) by the tables (S, head_dim) of `RotaryEmbedding`."""
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :].to(x.dtype) + swapped * sin[:, None, :].to(x.dtype)


class RopeTables(NamedTuple):
    """The tables already in the compute dtype: a segment casts them once instead of in each
    rotation (4 casts per attention, 24 attentions per segment in the paper's HRM; eager, every
    cast is a kernel launch)."""

    cos: Tensor
    sin: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return rotate(x, self.cos, self.sin)


class RotaryEmbedding(nn.Module):
    """RoPE tables for fixed per-position angles (positions, head_dim / 2), pair i being
    features (i, i + head_dim / 2) as in HRM's rotate_half; not part of the state dict."""

    def __init__(self, angles: Tensor):
        super().__init__()
        angles = torch.cat((angles, angles), dim=-1)  # (positions, head_dim)
        sin, half = angles.sin(), angles.shape[-1] // 2
        self.register_buffer("cos", angles.cos(), persistent=False)
        # rotate_half(x)·sin == swap_halves(x)·[-sin_1, sin_2] exactly, one negation fewer per call
        self.register_buffer("sin", torch.cat((-sin[:, :half], sin[:, half:]), dim=-1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Rotate `x` (B, S, heads, head_dim) by its positions."""
        return rotate(x, self.cos, self.sin)

    def tables(self, dtype: torch.dtype) -> RopeTables:
        return RopeTables(self.cos.to(dtype), self.sin.to(dtype))


def attention(q: Tensor, k: Tensor, v: Tensor, backend: str) -> Tensor:
    """Full (non-causal) attention on (B, S, heads, head_dim) tensors, same layout out."""
    if backend == "flash":
        from flash_attn import flash_attn_func  # imported only where it can run

        out = flash_attn_func(q, k, v, causal=False)
        return out[0] if isinstance(out, tuple) else out
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # SDPA and math take (B, heads, S, hd)
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        out = scores.float().softmax(dim=-1).to(v.dtype) @ v
    return out.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, backend: str):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.backend = backend
        self.qkv_proj = lecun_linear(hidden_size, 3 * hidden_size)
        self.o_proj = lecun_linear(hidden_size, hidden_size)

    def forward(self, x: Tensor, rope: RotaryEmbedding | RopeTables) -> Tensor:
        b, s, d = x.shape
        qkv = self.qkv_proj(x)
        q, k, v = qkv.view(b, s, 3, self.num_heads, self.head_dim).unbind(2)
        out = attention(rope(q), rope(k), v, select_backend(self.backend, x))
        return self.o_proj(out.reshape(b, s, d))

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, backend={self.backend}"


def swiglu_width(hidden_size: int, expansion: float) -> int:
    """round(expansion·hidden·2/3) rounded up to a multiple of 256, as HRM (64 -> 256)."""
    width = round(expansion * hidden_size * 2 / 3)
    return -(-width // 256) * 256


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, expansion: float):
        super().__init__()
        width = swiglu_width(hidden_size, expansion)
        self.gate_up_proj = lecun_linear(hidden_size, 2 * width)
        self.down_proj = lecun_linear(width, hidden_size)
        # h = silu(gate)·up from x and the gate_up weight in one op, when set: the Triton
        # kernels of `fused_swiglu.use_fused_swiglu`, which never store gate/up
        self.hidden = None

    def forward(self, x: Tensor) -> Tensor:
        if self.hidden is not None:
            return self.down_proj(self.hidden(x, self.gate_up_proj.weight.to(x.dtype)))
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    """Post-norm transformer block: x = rms(x + Attn(x)); x = rms(x + SwiGLU(x))."""

    def __init__(self, hidden_size: int, num_heads: int, expansion: float, backend: str):
        super().__init__()
        self.self_attn = Attention(hidden_size, num_heads, backend)
        self.mlp = SwiGLU(hidden_size, expansion)

    def forward(self, x: Tensor, rope: RotaryEmbedding | RopeTables) -> Tensor:
        x = rms_norm(x + self.self_attn(x, rope))
        return rms_norm(x + self.mlp(x))


class ReasoningModule(nn.Module):
    """H or L: a stack of blocks applied to `z + injection` (HRM's input injection by sum)."""

    def __init__(self, num_layers: int, hidden_size: int, num_heads: int, expansion: float,
                 backend: str):
        super().__init__()
        self.layers = nn.ModuleList(Block(hidden_size, num_heads, expansion, backend)
                                    for _ in range(num_layers))

    def forward(self, z: Tensor, injection: Tensor, rope: RotaryEmbedding | RopeTables) -> Tensor:
        z = z + injection
        for layer in self.layers:
            z = layer(z, rope)
        return z
