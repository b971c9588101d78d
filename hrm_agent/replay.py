"""Uniform experience replay stored as preallocated tensors on the model's device.

The authors used TorchRL's `LazyTensorStorage`; this is the same idea (storage allocated on the
first write, uniform sampling with replacement, oldest overwritten first) in a few lines, so the
buffer lives beside the model on the GPU, needs no extra dependency and checkpoints as a dict.
"""
from __future__ import annotations

import torch
from torch import Tensor


class ReplayBuffer:
    """A ring buffer of transitions; each field is a tensor with a leading batch dimension."""

    def __init__(self, capacity: int, device: torch.device | str = "cpu", seed: int = 0,
                 stride: int = 1):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.stride = stride  # transitions per `add` (B envs): env i's next step is `stride` slots on
        self.device = torch.device(device)
        self.storage: dict[str, Tensor] = {}
        self.pos = 0  # next slot to write
        self.size = 0
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, **fields: Tensor) -> None:
        """Append a batch of transitions (every field has the same leading size n)."""
        sizes = {name: value.shape[0] for name, value in fields.items()}
        n = next(iter(sizes.values()))
        if any(size != n for size in sizes.values()):
            raise ValueError(f"replay fields disagree on batch size: {sizes}")
        if not self.storage:
            self.storage = {
                name: torch.empty((self.capacity, *v.shape[1:]), dtype=v.dtype, device=self.device)
                for name, v in fields.items()
            }
        elif fields.keys() != self.storage.keys():
            raise ValueError(f"replay fields {sorted(fields)} != stored {sorted(self.storage)}")
        index = (self.pos + torch.arange(n, device=self.device)) % self.capacity
        for name, value in fields.items():
            self.storage[name][index] = value.to(self.device)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> dict[str, Tensor]:
        """`batch_size` transitions drawn uniformly with replacement."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        index = torch.randint(self.size, (batch_size,), device=self.device, generator=self.generator)
        return {name: value[index] for name, value in self.storage.items()}

    def sample_n_step(self, batch_size: int, n_step: int, gamma: float) -> dict[str, Tensor]:
        """Transitions whose `reward` is the discounted return of up to `n_step` consecutive
        steps of the same env (stopping at the episode's end); `next_*` fields and
        `terminated` are those of the last step used and `discount` is gamma**steps used,
        so y = reward + discount * (1 - terminated) * max Q(next_obs)."""
        span = (n_step - 1) * self.stride
        if self.size <= span:
            raise RuntimeError(f"{n_step}-step sampling needs more than {span} transitions")
        oldest = self.pos if self.size == self.capacity else 0
        offset = torch.randint(self.size - span, (batch_size,), device=self.device,
                               generator=self.generator)
        first = (oldest + offset) % self.capacity
        batch = {name: value[first] for name, value in self.storage.items()}
        ret = torch.zeros(batch_size, device=self.device)
        discount = torch.ones(batch_size, device=self.device)
        alive = torch.ones(batch_size, dtype=torch.bool, device=self.device)
        last = first
        for k in range(n_step):
            index = (first + k * self.stride) % self.capacity
            ret += torch.where(alive, discount * self.storage["reward"][index], 0.0)
            last = torch.where(alive, index, last)
            discount = torch.where(alive, discount * gamma, discount)
            alive &= ~(self.storage["terminated"][index] | self.storage["truncated"][index])
        batch.update({name: value[last] for name, value in self.storage.items()
                      if name.startswith("next_") or name in ("terminated", "truncated")})
        batch.update(reward=ret, discount=discount)
        return batch

    def state_dict(self, include_data: bool = True) -> dict:
        state = {"capacity": self.capacity, "generator": self.generator.get_state()}
        if include_data:
            state.update(pos=self.pos, size=self.size,
                         storage={k: v[: self.size].cpu() for k, v in self.storage.items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"replay capacity mismatch: checkpoint {state['capacity']}, "
                             f"config {self.capacity}")
        self.generator.set_state(state["generator"])
        if "storage" in state:
            self.storage = {}
            self.pos, self.size = 0, 0
            if state["size"]:
                stored = state["storage"]
                self.storage = {
                    k: torch.empty((self.capacity, *v.shape[1:]), dtype=v.dtype, device=self.device)
                    for k, v in stored.items()
                }
                for k, v in stored.items():
                    self.storage[k][: state["size"]] = v.to(self.device)
                self.pos, self.size = state["pos"], state["size"]
