"""CUDA graph semantics on a CPU, so that CI can test what the trainer captures.

A real capture records kernels without running them, and a replay runs them again on the memory
the capture saw: every Python value the function computed (a float, a shape, a branch taken) is
frozen at the capture, tensors made anew after it are never seen, and Python side effects do not
happen again. `EmulatedCUDAGraphed` gives `graphs.CUDAGraphed` those semantics on a CPU: its
capture records the aten ops the function runs (a dispatch mode), then puts back every tensor
and random generator the ops wrote to, and a replay re-runs the recorded ops on the recorded
tensors, each result written into the tensor the capture produced. A function that is wrong
to graph then computes on a CPU what it would compute on a GPU: something other than eager.
Under a dispatch mode torch.compile'd code runs eagerly, so this covers the graphs of the eager
path (that compiled code computes what eager does is tested apart).
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from hrm_agent.graphs import CUDAGraphed, _clone


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class Recording(TorchDispatchMode):
    """The aten ops run inside it, and the state they wrote that existed before (restored by
    `undo`, since a capture changes nothing)."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[Any, tuple, dict, Any]] = []
        self.made: set[int] = set()  # storages that recorded ops allocated
        self.saved: dict[int, tuple[torch.UntypedStorage, torch.UntypedStorage]] = {}
        self.generators = {id(torch.default_generator):
                           (torch.default_generator, torch.default_generator.get_state())}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {_key(t) for t in _tensors((args, kwargs))}
        for i, arg in enumerate(func._schema.arguments):
            written = arg.alias_info is not None and arg.alias_info.is_write
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            for t in _tensors(value) if written else ():
                key = _key(t)
                if key and key not in self.made and key not in self.saved:
                    self.saved[key] = (t.untyped_storage(), t.untyped_storage().clone())
        generator = kwargs.get("generator")
        if generator is not None and id(generator) not in self.generators:
            self.generators[id(generator)] = (generator, generator.get_state())
        out = func(*args, **kwargs)
        self.made.update(_key(t) for t in _tensors(out) if _key(t) not in inputs)
        self.ops.append((func, args, kwargs, out))
        return out

    def undo(self) -> None:
        for storage, before in self.saved.values():
            storage.copy_(before)
        for generator, state in self.generators.values():
            generator.set_state(state)

    @torch.no_grad()
    def replay(self) -> None:
        for func, args, kwargs, out in self.ops:
            for old, new in zip(_tensors(out), _tensors(func(*args, **kwargs))):
                if new.data_ptr() != old.data_ptr():  # (a view or an in-place op wrote it already)
                    old.copy_(new)


class EmulatedCUDAGraphed(CUDAGraphed):
    """`CUDAGraphed` with its CUDA parts (side stream, capture, replay) emulated on a CPU."""

    def _on_side_stream(self, args: tuple) -> Any:
        return self.fn(*args)

    def _capture(self, args: tuple) -> None:
        self.static_args = tree_map(_clone, args)  # as CUDAGraphed's own capture
        with Recording() as self.graph:
            self.static_out = self.fn(*self.static_args)
        self.graph.undo()
