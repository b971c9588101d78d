"""Acting with a HRM Q-network in B parallel envs, chaining z through env time (paper §2.5).

Under Carry Z the last-token z_H, z_L after the 8 segments for s_t seed the model's state for
s_{t+1}; under Reset Z every env step starts from the fixed H_init / L_init. Envs that start a
new episode are reset to the init through `episode_start`, the contract recurrent policies use.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

from hrm_agent.models import QNetwork, Seed


def epsilon_greedy(q: Tensor, epsilon: float | Tensor,
                   generator: torch.Generator | None = None) -> Tensor:
    """Greedy actions, each replaced by a uniform random one with probability `epsilon` (per env;
    a 0-d tensor on q's device is never read back to the host)."""
    greedy = q.argmax(dim=-1)
    if not isinstance(epsilon, Tensor) and epsilon <= 0.0:
        return greedy
    explore = torch.rand(q.shape[0], device=q.device, generator=generator) < epsilon
    random = torch.randint(q.shape[-1], (q.shape[0],), device=q.device, generator=generator)
    return torch.where(explore, random, greedy)


class Step(NamedTuple):
    actions: Tensor  # (B,) long
    q: Tensor  # (B, num_actions) float32
    prev_seed: Seed  # the state s_t was processed from
    seed: Seed  # the state after processing s_t: the seed of s_{t+1} under Carry Z
    trace: tuple[Tensor, Tensor] | None  # per-segment last-token (z_H, z_L) when asked for


def q_and_seed(model: QNetwork, obs: Tensor, z_H: Tensor, z_L: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The acting forward as a function of tensors only (what a CUDA graph can capture)."""
    out = model(obs, Seed(z_H, z_L))
    return out.q, out.seed.z_H, out.seed.z_L


class Agent:
    """Holds the per-env seed between calls; `act` once per env step.

    `forward` replaces `q_and_seed(model, ...)` (the trainer passes a CUDA-graphed one)."""

    def __init__(self, model: QNetwork, num_envs: int, carry_z: bool, forward=None):
        self.model = model
        self.carry_z = carry_z
        self.seed = model.init_seed(num_envs)
        self.forward = forward or functools.partial(q_and_seed, model)

    @torch.no_grad()
    def act(self, obs: Tensor, episode_start: Tensor, epsilon: float | Tensor = 0.0,
            generator: torch.Generator | None = None, trace: bool = False) -> Step:
        """Q-values after all segments, and ε-greedy actions, for the observations `obs`."""
        if self.carry_z:
            prev_seed = self.model.reset_seed(self.seed, episode_start)
        else:
            prev_seed = self.model.init_seed(obs.shape[0])
        traced = None
        if trace:
            out = self.model(obs, prev_seed, trace=True)
            q, seed, traced = out.q, out.seed, out.trace
        else:
            q, z_H, z_L = self.forward(obs, *prev_seed)
            seed = Seed(z_H, z_L)
        self.seed = seed
        return Step(epsilon_greedy(q, epsilon, generator), q, prev_seed, seed, traced)
