"""Seeing GPU syncs on a CPU: a dispatch mode that records the ops that read a tensor's values
on the host (on a GPU each is a sync, and a CUDA graph cannot contain one)."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

DATA_DEPENDENT_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "masked_scatter", "unique",
                      "_unique", "_unique2", "unique_consecutive", "unique_dim", "bincount",
                      "repeat_interleave", "equal", "is_nonzero"}


def reads_device(func, args, kwargs) -> bool:
    """Whether an aten op reads the device from the host (a sync on a GPU): `.item()` / `int()`,
    ops whose output shape depends on the data (boolean-mask indexing included), and explicit
    copies to the CPU (`.cpu()` and `.tolist()` copy nothing on the CPU, so they go unseen)."""
    name = func._overloadpacket.__name__
    if name in DATA_DEPENDENT_OPS:
        return True
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
    return name == "_to_copy" and kwargs.get("device") == torch.device("cpu")


class HostReads(TorchDispatchMode):
    """Records the host reads of the ops run inside it, with `phase` saying where they happen."""

    def __init__(self):
        super().__init__()
        self.reads: list[tuple[str, str]] = []
        self.phase = "step"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if reads_device(func, args, kwargs):
            self.reads.append((self.phase, func._overloadpacket.__name__))
        return func(*args, **kwargs)
