"""The Q-network interface: what `Trainer`, `Agent`, `evaluate`, the widget and `analysis` use.

Every network maps a batch of observations (B, seq_len) of token ids to Q-values (B, num_actions).
A recurrent network (the HRM) also carries a state between segments (a `Carry`) and between env
steps (a `Seed`, what the replay buffer stores under Carry Z). A network without recurrence
plugs in through the same calls with a trivial, zero-width state (`Feedforward`), so the
trainer, acting and evaluation code never ask which network they run.
"""
from __future__ import annotations

from typing import ClassVar, NamedTuple, Protocol

import torch
from torch import Tensor, nn


class Seed(NamedTuple):
    """Initial z_H, z_L for one env step: (B, D), the last token's state (the HRM's optional
    full carry: (B, positions, D))."""

    z_H: Tensor
    z_L: Tensor


class Carry(NamedTuple):
    """The recurrent state between segments, (B, positions, D) each."""

    z_H: Tensor
    z_L: Tensor


class QOutput(NamedTuple):
    q: Tensor  # (B, num_actions), float32
    seed: Seed  # the state after the last segment, detached: the next step's seed under Carry Z
    trace: tuple[Tensor, Tensor] | None  # last-token (z_H, z_L) after segments 0..n, (n+1, B, D)


class QNetworkConfig(Protocol):
    """The fields every model config has; each kind adds and validates its own."""

    kind: str  # the registry key in `hrm_agent.models.MODELS`
    seq_len: int  # observation tokens, set from the env
    grid_width: int  # the observation grid's row length, set from the env
    num_actions: int
    segments: int  # segments per acting forward (= optimizer steps per minibatch)


class QNetwork(Protocol):
    """A Q-network as the rest of hrm-agent uses it (an `nn.Module` in practice)."""

    recurrent: ClassVar[bool]  # False: the seed and carry are trivial, Carry Z = Reset Z
    config: QNetworkConfig

    def init_seed(self, batch_size: int) -> Seed:
        """The fixed initial state (Reset Z, and Carry Z at episode starts)."""

    def reset_seed(self, seed: Seed, episode_start: Tensor) -> Seed:
        """`seed` with the envs flagged by `episode_start` (bool, (B,)) set back to the init."""

    def carry_from_seed(self, seed: Seed) -> Carry:
        """The state the first segment of an env step starts from."""

    def seed_from_carry(self, carry: Carry) -> Seed:
        """What of the last segment's state the next env step starts from (detached)."""

    def compile(self, **kwargs) -> None:
        """torch.compile the network's hot part in place (what `train.compile` turns on)."""

    def segment(self, carry: Carry, inputs: Tensor, x: Tensor | None = None) -> tuple[Carry, Tensor]:
        """One differentiable segment (a training step): the detached new carry and Q (B, A).
        `x` is the embedded input when the caller has it already."""

    def forward(self, inputs: Tensor, seed: Seed, *, segments: int | None = None,
                trace: bool = False) -> QOutput:
        """Q after `segments` (default: config) segments from `seed` (acting, under no_grad)."""


def check_observations(inputs: Tensor, seq_len: int) -> None:
    """Observations must be (B, seq_len) token ids: anything else is a caller's mistake."""
    if inputs.dim() != 2 or inputs.shape[1] != seq_len:
        raise ValueError(f"expected observations of shape (B, {seq_len}), got {tuple(inputs.shape)}")


class Feedforward(nn.Module):
    """Base of the non-recurrent baselines: subclasses define `q_values(inputs)`.

    Their state has width 0: seeds (B, 0), carries (B, 1, 0) (one position, as if the last
    token), so Reset Z and Carry Z act alike, a replay buffer storing seeds under Carry Z still
    works, and code that reads the last token's state (traces, analysis) gets (B, 0). Every
    segment computes the same Q from the observation alone, so a forward computes it once
    whatever `segments` says."""

    recurrent: ClassVar[bool] = False

    def q_values(self, inputs: Tensor) -> Tensor:
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def compile(self, **kwargs) -> None:
        """torch.compile `q_values`, what every segment and forward calls."""
        self.q_values = torch.compile(self.q_values, **kwargs)

    def init_seed(self, batch_size: int) -> Seed:
        empty = torch.zeros(batch_size, 0, device=next(self.parameters()).device)
        return Seed(empty, empty)

    def reset_seed(self, seed: Seed, episode_start: Tensor) -> Seed:
        return seed

    def carry_from_seed(self, seed: Seed) -> Carry:
        return Carry(seed.z_H[:, None], seed.z_L[:, None])

    def seed_from_carry(self, carry: Carry) -> Seed:
        return Seed(carry.z_H[:, -1], carry.z_L[:, -1])

    def segment(self, carry: Carry, inputs: Tensor, x: Tensor | None = None) -> tuple[Carry, Tensor]:
        return carry, self.q_values(inputs).float()

    def forward(self, inputs: Tensor, seed: Seed, *, segments: int | None = None,
                trace: bool = False) -> QOutput:
        n = self.config.segments if segments is None else segments
        if n < 1:
            raise ValueError(f"segments must be >= 1, got {n}")
        q = self.q_values(inputs).float()
        traced = None
        if trace:
            empty = torch.zeros(n + 1, inputs.shape[0], 0, device=q.device)
            traced = (empty, empty)
        return QOutput(q, seed, traced)
