"""AdamATan2's elementwise update in one Triton kernel for all parameters (`AdamATan2(fused=True)`).

The foreach update launches ~20 kernels for all parameters plus three for each: atan2 has no
foreach form, and dividing by or multiplying with a per-parameter 0-d step tensor takes
PyTorch's one-tensor-at-a-time fallback. At the paper's 36 parameters that is ~130 launches
per optimizer step, each far shorter than its launch. The authors' `adam-atan2` is a fused CUDA
kernel too. Here p, g, m and v of every parameter are concatenated into one buffer each, one
kernel reads them once and writes p, m and v, and one `_foreach_copy_` puts them back: ~9
launches a step (a kernel per parameter, 34 at ~3.7 us each on an H100, was the last
version). The arithmetic is the foreach path's, in its order (IEEE sqrt and division, CUDA's
atan2f), so the two agree to rounding; the per-parameter scalars (bias corrections, step
sizes) are the foreach path's own, computed before the kernel.

`TRITON_INTERPRET=1` runs it on a CPU (the tests), with numpy's arctan2 for CUDA's atan2f,
which Triton's interpreter cannot call.
"""
from __future__ import annotations

import numpy as np
import torch
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
def _adam_atan2_kernel(p_ptr, g_ptr, m_ptr, v_ptr, step_size_ptr, bc2_sqrt_ptr, decay_ptr,
                       table_ptr, lerp_weight, beta2, one_minus_beta2, DECAY: tl.constexpr,
                       BLOCK: tl.constexpr):
    """BLOCK elements of one parameter per program, in the flat buffers p, g, m, v: the
    program's row of the table is the parameter's index, the program's first element and the
    parameter's end. The scalars are float64 (a 0-d decay, a step size and bias correction per
    parameter), rounded to fp32 as PyTorch's elementwise kernels round them."""
    row = table_ptr + tl.program_id(0) * 3
    i = tl.load(row)
    offsets = tl.load(row + 1) + tl.arange(0, BLOCK)
    mask = offsets < tl.load(row + 2)
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
    denom = tl.div_rn(tl.sqrt_rn(v), tl.load(bc2_sqrt_ptr + i).to(tl.float32))
    p = p - _atan2(m, denom) * tl.load(step_size_ptr + i).to(tl.float32)
    tl.store(p_ptr + offsets, p, mask=mask)
    tl.store(m_ptr + offsets, m, mask=mask)
    tl.store(v_ptr + offsets, v, mask=mask)


_TABLES: dict[tuple, Tensor] = {}  # the program table of each list of parameter sizes


def _table(sizes: tuple[int, ...], device: torch.device) -> Tensor:
    """Per program (int32): its parameter's index, its first element in the flat buffers, and
    the parameter's end; made once per list of sizes (before a CUDA graph captures the step)."""
    key = (sizes, str(device))
    if key not in _TABLES:
        rows, start = [], 0
        for i, n in enumerate(sizes):
            rows += [(i, first, start + n) for first in range(start, start + n, BLOCK)]
            start += n
        _TABLES[key] = torch.tensor(rows, dtype=torch.int32, device=device)
    return _TABLES[key]


def adam_atan2_(params: list[Tensor], grads: list[Tensor], m: list[Tensor], v: list[Tensor],
                step_size: list[Tensor], bc2_sqrt: list[Tensor], decay: Tensor | None,
                beta1: float, beta2: float) -> None:
    """In place, for each parameter p (its gradient g, moments m and v, 0-d step size and
    bias correction): m <- lerp(m, g, 1-beta1); v <- beta2 v + (1-beta2) g^2;
    p <- p·decay (when given) - step_size·atan2(m, sqrt(v) / bc2_sqrt). p, m, v: fp32."""
    sizes = tuple(p.numel() for p in params)
    table = _table(sizes, params[0].device)
    flat_p, flat_g, flat_m, flat_v = (torch.cat([t.reshape(-1) for t in ts])
                                      for ts in (params, grads, m, v))
    step_sizes = torch.stack(step_size)
    with checked(flat_p, lambda: f"AdamATan2's kernel ({len(sizes)} parameters)"):
        _adam_atan2_kernel[(len(table),)](
            flat_p, flat_g, flat_m, flat_v, step_sizes, torch.stack(bc2_sqrt),
            step_sizes if decay is None else decay, table, 1 - beta1, beta2, 1 - beta2,
            DECAY=decay is not None, BLOCK=BLOCK)
    targets = [*params, *m, *v]
    flats = [part for flat in (flat_p, flat_m, flat_v) for part in flat.split(sizes)]
    torch._foreach_copy_(targets, [part.view_as(t) for part, t in zip(flats, targets)])
