"""The HRM Q-network of HRM-Agent (paper-notes §2).

A Hierarchical Reasoning Model reads the token grid (plus one prepended task token) and refines
two recurrent states, z_H (slow, high level) and z_L (fast, low level). One *segment* runs
H_cycles × L_cycles updates: L updates as z_L ← L(z_L + z_H + x), an H update z_H ← H(z_H + z_L)
after every L_cycles of them; only the last L and the last H update carry gradient (HRM's
1-step gradient). Acting runs `segments` (8) segments without gradient; Q(s, ·) is the first
`num_actions` outputs of the output layer on z_H at the last observation token.

Two input/output options beyond the paper, off by default: `pos_encoding="rope2d"` (RoPE by
the cell's row and column instead of its index in the flattened grid) and `readout="mean"` (Q
from the mean of z_H over the observation tokens instead of the last one, which must gather
the whole grid through attention). Together they make the CPU model fit Q* about 3x better
in 3,000 steps (`python -m hrm_agent bench fit`, numbers in hrm_agent/bench/fit.py).

Between env steps the state is summarised by a `Seed`: under the paper's Carry Z, the last-token
z_H, z_L of the previous step (broadcast to every position as the next initial state); under
Reset Z, the fixed buffers H_init, L_init. `carry="full"` (beyond the paper) keeps every token's
state instead.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from hrm_agent.config import require
from hrm_agent.models.base import Carry, QOutput, Seed, check_observations
from hrm_agent.models.layers import (BACKENDS, ReasoningModule, RotaryEmbedding, compile_kwargs,
                                     embedding, grid_angles, lecun_linear, select_backend,
                                     sequence_angles, trunc_normal_)

VOCAB_SIZE = 131  # paper-notes §1.5: the ASCII codes the observations use, 0..130


@dataclass(frozen=True)
class HRMConfig:
    """The architecture. Defaults are the paper's (paper-notes §2.1), 541,186 parameters."""

    seq_len: int  # observation tokens: 121 (four-rooms) or 143 (maze); set from the env
    grid_width: int = 0  # the grid's row length (11 or 13), set from the env; rope2d needs it
    kind: Literal["hrm"] = "hrm"
    vocab_size: int = VOCAB_SIZE
    num_actions: int = 4
    hidden_size: int = 64
    num_heads: int = 2
    H_layers: int = 4
    L_layers: int = 4
    H_cycles: int = 2
    L_cycles: int = 2
    expansion: float = 4.0
    segments: int = 8  # HRM's halt_max_steps with ACT disabled: segments per forward
    rope_theta: float = 10_000.0
    pos_encoding: Literal["rope", "rope2d"] = "rope"  # rope2d: row and column angles (ours)
    readout: Literal["last", "mean"] = "last"  # Q from z_H at the last / mean observation token
    task_token: bool = True  # the prepended puzzle embedding (a single zero-init 64-d token)
    carry: Literal["last_token", "full"] = "last_token"  # what a Seed holds (paper: last token)
    attn_backend: Literal["auto", "flash", "sdpa", "math"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU

    def __post_init__(self):
        for name in ["seq_len", "vocab_size", "num_actions", "hidden_size", "num_heads",
                     "H_layers", "L_layers", "H_cycles", "L_cycles", "segments"]:
            value = getattr(self, name)
            require(value >= 1, f"model.{name} must be >= 1, got {value}")
        require(self.num_actions <= self.vocab_size,
                f"model.num_actions={self.num_actions} exceeds the output width {self.vocab_size}")
        check_blocks(self)

    @property
    def positions(self) -> int:
        return self.seq_len + int(self.task_token)


def check_blocks(config) -> None:
    """What the blocks and their RoPE need of a config (the HRM's and the flat transformer's);
    rope2d also needs the grid's shape and a head size it can split between rows and columns."""
    require(config.hidden_size % config.num_heads == 0,
            f"model.hidden_size={config.hidden_size} is not divisible by num_heads={config.num_heads}")
    require((config.hidden_size // config.num_heads) % 2 == 0,
            "model.hidden_size / num_heads must be even for RoPE")
    require(config.expansion > 0, f"model.expansion must be > 0, got {config.expansion}")
    require(config.attn_backend in BACKENDS, f"model.attn_backend={config.attn_backend!r} unknown")
    require(config.grid_width >= 0, f"model.grid_width must be >= 0, got {config.grid_width}")
    if config.pos_encoding == "rope2d":
        require(config.grid_width >= 1 and config.seq_len % config.grid_width == 0,
                f"model.pos_encoding='rope2d' needs model.grid_width dividing seq_len="
                f"{config.seq_len}, got {config.grid_width}")
        require((config.hidden_size // config.num_heads) % 4 == 0,
                "model.pos_encoding='rope2d' needs hidden_size / num_heads divisible by 4")


def rotary_embedding(config) -> RotaryEmbedding:
    """The RoPE tables of `config.pos_encoding` for its positions (task token first)."""
    head_dim = config.hidden_size // config.num_heads
    if config.pos_encoding == "rope2d":
        rows = config.seq_len // config.grid_width
        return RotaryEmbedding(grid_angles(head_dim, rows, config.grid_width, config.rope_theta,
                                           config.task_token))
    return RotaryEmbedding(sequence_angles(head_dim, config.positions, config.rope_theta))


def readout(z: Tensor, mode: str, task_token: bool) -> Tensor:
    """The state Q is read from: z (B, positions, D) at the last token, or its mean over the
    observation tokens (the task token, first, left out)."""
    if mode == "mean":
        return z[:, int(task_token):].mean(dim=1)
    return z[:, -1]


class TokenInput:
    """The input and output side of the HRM, shared with the flat transformer baseline: token
    and task embeddings, RoPE tables, compute dtype, and Q read off `lm_head`."""

    def init_input(self, c) -> None:
        d = c.hidden_size
        self.embed_scale = math.sqrt(d)
        self.embed_tokens = nn.Embedding(c.vocab_size, d)
        with torch.no_grad():
            trunc_normal_(self.embed_tokens.weight, 1.0 / self.embed_scale)
        # The task (puzzle) embedding: trained by SignSGD, not counted among the parameters,
        # as in the authors' code where it is a sparse-embedding buffer.
        self.task_embedding = nn.Parameter(torch.zeros(d)) if c.task_token else None
        self.rope = rotary_embedding(c)

    def compute_dtype(self, device: torch.device | None = None) -> torch.dtype:
        device = device or self.embed_tokens.weight.device
        if self.config.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return getattr(torch, self.config.dtype)

    def _autocast(self, device: torch.device):
        dtype = self.compute_dtype(device)
        if dtype == torch.float32:
            return nullcontext()
        # On CUDA autocast's cache of cast weights is off: a CUDA graph cannot capture it, and
        # torch.compile guards on the flag, so turning it off only for the capture would
        # recompile there. (The authors' CastedLinear recasts its weight on every call too.)
        return torch.autocast(device.type, dtype=dtype, cache_enabled=device.type != "cuda")

    def embed(self, inputs: Tensor) -> Tensor:
        """Token embeddings (task token first), scaled by sqrt(hidden), in the compute dtype
        (autocast leaves embeddings in fp32): so in bf16 the states z are bf16 too, as the
        authors' are, which halves the memory traffic of the residual stream and of z in
        replay. (At hidden 64 the scale, 8, is exact on either side of the cast, as the
        authors cast first.)"""
        check_observations(inputs, self.config.seq_len)
        x = embedding(self.embed_tokens.weight, inputs.long())
        if self.task_embedding is not None:
            task = self.task_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat((task, x), dim=1)
        return (self.embed_scale * x).to(self.compute_dtype(inputs.device))

    def read_q(self, z: Tensor) -> Tensor:
        """Q (B, num_actions) from the states z (B, positions, D) as `config.readout` says."""
        c = self.config
        # Only the first num_actions rows of the HRM's 131-wide output layer are ever read.
        return torch.nn.functional.linear(readout(z, c.readout, c.task_token),
                                          self.lm_head.weight[: c.num_actions])


class HRMQNetwork(TokenInput, nn.Module):
    """The `QNetwork` interface (models/base.py) with z_H, z_L as its recurrent state."""

    recurrent: ClassVar[bool] = True

    def __init__(self, config: HRMConfig):
        super().__init__()
        c = self.config = config
        d = c.hidden_size
        self.init_input(c)
        self.H_level = ReasoningModule(c.H_layers, d, c.num_heads, c.expansion, c.attn_backend)
        self.L_level = ReasoningModule(c.L_layers, d, c.num_heads, c.expansion, c.attn_backend)
        self.lm_head = lecun_linear(d, c.vocab_size)
        # HRM's halting head: kept (unused, ACT is off) so the parameter count is the paper's.
        self.q_head = nn.Linear(d, 2, bias=True)
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)
        self.register_buffer("H_init", trunc_normal_(torch.empty(d), 1.0))
        self.register_buffer("L_init", trunc_normal_(torch.empty(d), 1.0))
        self._segment_fn = self._segment
        self.fused_blocks = False

    def use_fused_blocks(self) -> None:
        """Run the gradient-free updates (all of acting's and the target's, all but the last L
        and H update of a training segment) one Triton kernel per block (models/fused.py)."""
        try:
            from hrm_agent.models import fused
        except ImportError as exc:
            raise ValueError(f"the fused blocks need triton: {exc}") from None
        fused.require_kernel_device(self.H_init, "the fused blocks need")
        for level in (self.H_level, self.L_level):
            reason = fused.unsupported(level)
            if reason:
                raise ValueError(reason)
        self._fused_module, self._block_weights = fused.fused_module, fused.block_weights
        self.fused_blocks = True

    def compile(self, **kwargs) -> None:
        """torch.compile one segment (what acting, targets and training all loop over), not
        `forward`, so the 8-segment loop stays in Python and compiles once, not per length."""
        kwargs = compile_kwargs(self.config.attn_backend, kwargs)
        self._segment_fn = torch.compile(self._segment, **kwargs)

    # -- bookkeeping --------------------------------------------------------------------------
    def num_parameters(self) -> int:
        """Trainable parameters as the paper counts them (task embedding excluded)."""
        return sum(p.numel() for name, p in self.named_parameters() if name != "task_embedding")

    def attention_backend(self) -> str:
        """The kernel attention uses on this model's device and dtype."""
        probe = torch.empty(0, device=self.H_init.device, dtype=self.compute_dtype())
        return select_backend(self.config.attn_backend, probe)

    def extra_repr(self) -> str:
        c = self.config
        return (f"seq_len={c.seq_len}, H_cycles={c.H_cycles}, L_cycles={c.L_cycles}, "
                f"segments={c.segments}, carry={c.carry}, attention={c.attn_backend}->"
                f"{self.attention_backend()}, dtype={self.compute_dtype()}, "
                f"parameters={self.num_parameters():,}")

    # -- seeds and carries --------------------------------------------------------------------
    def init_seed(self, batch_size: int) -> Seed:
        """The fixed initial state (Reset Z, and Carry Z at episode starts), in the compute dtype."""
        dtype = self.compute_dtype()
        H_init, L_init = self.H_init.to(dtype), self.L_init.to(dtype)
        if self.config.carry == "full":
            shape = (batch_size, self.config.positions, -1)
            return Seed(H_init.expand(shape), L_init.expand(shape))
        return Seed(H_init.expand(batch_size, -1), L_init.expand(batch_size, -1))

    def reset_seed(self, seed: Seed, episode_start: Tensor) -> Seed:
        """`seed` with the envs flagged by `episode_start` (bool, (B,)) set back to the init."""
        init = self.init_seed(episode_start.shape[0])
        mask = episode_start.view(-1, *[1] * (seed.z_H.dim() - 1))
        return Seed(torch.where(mask, init.z_H, seed.z_H), torch.where(mask, init.z_L, seed.z_L))

    def carry_from_seed(self, seed: Seed) -> Carry:
        """Broadcast a seed to every position (a full-carry seed already is one), as contiguous
        tensors: the layout of the carry every later segment gets, so a compiled segment
        compiles once for the first segment of a forward and the others (an expanded view, or
        the expanded init seed, would each be a variant of their own)."""
        if seed.z_H.dim() == 3:
            return Carry(seed.z_H.contiguous(), seed.z_L.contiguous())
        shape = (seed.z_H.shape[0], self.config.positions, seed.z_H.shape[-1])
        return Carry(*(z[:, None].expand(shape).contiguous() for z in seed))

    def seed_from_carry(self, carry: Carry) -> Seed:
        if self.config.carry == "full":
            return Seed(carry.z_H.detach(), carry.z_L.detach())
        return Seed(carry.z_H[:, -1].detach(), carry.z_L[:, -1].detach())

    # -- the network --------------------------------------------------------------------------
    def _update(self, level: ReasoningModule, z: Tensor, injection: Tensor, rope,
                weights: list | None) -> Tensor:
        """level(z, injection): one fused kernel per block (with the level's `weights`) when
        no gradient is needed."""
        if weights is not None and not torch.is_grad_enabled():
            return self._fused_module(level, z, injection, rope, weights)
        return level(z, injection, rope)

    def _segment(self, z_H: Tensor, z_L: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One segment from (z_H, z_L) on embedded input x; only the last L and H updates
        are differentiable. Returns the new z_H, z_L and Q."""
        c = self.config
        rope = self.rope.tables(x.dtype)
        with torch.no_grad():
            w_H = w_L = None
            if self.fused_blocks:  # the fused blocks' weights, cast once for the segment
                w_H, w_L = self._block_weights((self.H_level, self.L_level), x.dtype)
            for h in range(c.H_cycles):
                for l in range(c.L_cycles):
                    if h < c.H_cycles - 1 or l < c.L_cycles - 1:
                        z_L = self._update(self.L_level, z_L, z_H + x, rope, w_L)
                if h < c.H_cycles - 1:
                    z_H = self._update(self.H_level, z_H, z_L, rope, w_H)
        z_L = self._update(self.L_level, z_L, z_H + x, rope, w_L)
        z_H = self._update(self.H_level, z_H, z_L, rope, w_H)
        return z_H, z_L, self.read_q(z_H)

    def segment(self, carry: Carry, inputs: Tensor, x: Tensor | None = None) -> tuple[Carry, Tensor]:
        """One differentiable segment (training). Returns the detached new carry and Q (B, A)."""
        with self._autocast(inputs.device):
            if x is None:
                x = self.embed(inputs)
            dtype = x.dtype
            z_H, z_L, q = self._segment_fn(carry.z_H.to(dtype), carry.z_L.to(dtype), x)
        return Carry(z_H.detach(), z_L.detach()), q.float()

    def forward(self, inputs: Tensor, seed: Seed, *, segments: int | None = None,
                trace: bool = False) -> QOutput:
        """Run `segments` (default: config) segments from `seed`; Q after the last one."""
        n = self.config.segments if segments is None else segments
        if n < 1:
            raise ValueError(f"segments must be >= 1, got {n}")
        with self._autocast(inputs.device):
            x = self.embed(inputs)
        carry = self.carry_from_seed(seed)
        states = [(carry.z_H[:, -1], carry.z_L[:, -1])] if trace else None
        for _ in range(n):
            carry, q = self.segment(carry, inputs, x)
            if states is not None:
                states.append((carry.z_H[:, -1], carry.z_L[:, -1]))
        traced = None
        if states is not None:
            traced = (torch.stack([s[0] for s in states]).float(),
                      torch.stack([s[1] for s in states]).float())
        return QOutput(q, self.seed_from_carry(carry), traced)
