"""AdamATan2's elementwise update in one Triton kernel per parameter (`AdamATan2(fused=True)`).

The foreach update launches ~20 kernels for all parameters plus three for each: atan2 has no
foreach form, and dividing by or multiplying with a per-parameter 0-d step tensor takes
PyTorch's one-tensor-at-a-time fallback. At the paper's 36 parameters that is ~130 launches
per optimizer step, each far shorter than its launch. The authors' `adam-atan2` is a fused CUDA
kernel too. Here one kernel per parameter reads p, g, m and v once and writes p, m and v, with
the foreach path's arithmetic in its order (IEEE sqrt and division, CUDA's atan2f), so the two
agree to rounding. The per-parameter scalars (bias corrections, step sizes) are the foreach
path's own, computed before the kernels.

`TRITON_INTERPRET=1` runs it on a CPU (the tests), with numpy's arctan2 for CUDA's atan2f,
which Triton's interpreter cannot call.
"""
from __future__ import annotations

import numpy as np
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice

from hrm_agent.models.fused import INTERPRET, checked

BLOCK = 1024


def _interpreted_atan2(y, x):
    """atan2 on the interpreter's tensors (numpy arrays in `handle.data`)."""
    from triton.runtime.interpreter import TensorHandle

    data = np.arctan2(y.handle.data, x.handle.data).astype(y.handle.data.dtype)
    return tl.core.tensor(TensorHandle(data, y.handle.dtype), y.type)


_atan2 = _interpreted_atan2 if INTERPRET else libdevice.atan2


@triton.jit
def _adam_atan2_kernel(p_ptr, g_ptr, m_ptr, v_ptr, step_size_ptr, bc2_sqrt_ptr, decay_ptr, n,
                       lerp_weight, beta2, one_minus_beta2, DECAY: tl.constexpr,
                       BLOCK: tl.constexpr):
    """One parameter's update, BLOCK elements per program. The scalars are 0-d float64 tensors,
    rounded to fp32 as PyTorch's elementwise kernels round them."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    p = tl.load(p_ptr + offsets, mask=mask)
    g = tl.load(g_ptr + offsets, mask=mask).to(tl.float32)
    m = tl.load(m_ptr + offsets, mask=mask)
    v = tl.load(v_ptr + offsets, mask=mask)
    if lerp_weight < 0.5:  # torch.lerp's two forms
        m = m + lerp_weight * (g - m)
    else:
        m = g - (g - m) * (1.0 - lerp_weight)
    v = v * beta2
    v = v + one_minus_beta2 * (g * g)
    if DECAY:
        p = p * tl.load(decay_ptr).to(tl.float32)
    denom = tl.div_rn(tl.sqrt_rn(v), tl.load(bc2_sqrt_ptr).to(tl.float32))
    p = p - _atan2(m, denom) * tl.load(step_size_ptr).to(tl.float32)
    tl.store(p_ptr + offsets, p, mask=mask)
    tl.store(m_ptr + offsets, m, mask=mask)
    tl.store(v_ptr + offsets, v, mask=mask)


def adam_atan2_(p: Tensor, g: Tensor, m: Tensor, v: Tensor, step_size: Tensor, bc2_sqrt: Tensor,
                decay: Tensor | None, beta1: float, beta2: float) -> None:
    """In place: m <- lerp(m, g, 1-beta1); v <- beta2 v + (1-beta2) g^2; p <- p·decay (when
    given) - step_size·atan2(m, sqrt(v) / bc2_sqrt). p, m, v: contiguous fp32."""
    n = p.numel()
    with checked(p, lambda: f"AdamATan2's kernel (a parameter of {n} values)"):
        _adam_atan2_kernel[(triton.cdiv(n, BLOCK),)](
            p, g.contiguous(), m, v, step_size, bc2_sqrt, step_size if decay is None else decay,
            n, 1 - beta1, beta2, 1 - beta2, DECAY=decay is not None, BLOCK=BLOCK)
