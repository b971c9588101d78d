"""CUDA graphs for the training loop's fixed-shape work: the acting forward and the learn step.

Eagerly, one optimizer step of the paper profile launches thousands of small kernels, and a
GPU spends more time waiting for launches than computing (the HRM's matmuls have an inner
dimension of 64). A CUDA graph records a function's kernels once and replays them with a
single launch. `CUDAGraphed(fn)` does what PyTorch's "whole network capture" recipe says:
a few warm-up calls on a side stream (lazy optimizer state, torch.compile's compilation,
cuBLAS workspaces), then one capture into static input buffers; every later call copies its
inputs into those buffers and replays. What `fn` may do is therefore restricted: tensors of
fixed shapes in and out, no host reads (a sync would fail the capture), no Python control flow
on tensor values, and no state it allocates anew on a later call. The trainer's `act` and
`learn_minibatch` are written that way; both still run eagerly on a CPU.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils._pytree import tree_map

WARMUP = 3  # eager calls before the capture


def _clone(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


class CUDAGraphed:
    """`fn(*args)` (args and result: pytrees of tensors) replayed as one CUDA graph after
    `warmup` eager calls. Each call returns fresh tensors (clones of the static outputs), so
    a caller may keep them across calls."""

    def __init__(self, fn: Callable[..., Any], warmup: int = WARMUP):
        self.fn, self.warmup = fn, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_args: Any = None
        self.static_out: Any = None

    def __call__(self, *args: Any) -> Any:
        if self.graph is None:
            self.calls += 1
            if self.calls <= self.warmup:  # on copies laid out as the static inputs will be (a
                # clone of an expanded view is contiguous), so that torch.compile has compiled
                # for that layout before the capture, where compiling cannot happen
                return self._on_side_stream(tree_map(_clone, args))
            self._capture(args)
        else:
            tree_map(lambda dst, src: dst.copy_(src) if isinstance(dst, torch.Tensor) else None,
                     self.static_args, args)
        self.graph.replay()
        return tree_map(_clone, self.static_out)

    def _on_side_stream(self, args: tuple) -> Any:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = self.fn(*args)
        torch.cuda.current_stream().wait_stream(stream)
        return out

    def _capture(self, args: tuple) -> None:
        """Record `fn` on static copies of `args`; the kernels run only at the first replay."""
        self.static_args = tree_map(_clone, args)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = self.fn(*self.static_args)
