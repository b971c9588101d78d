"""The flat transformer baseline: HRM's blocks without the hierarchy or the recurrence.

The same token embedding, task token, RoPE, blocks and Q readout as `HRMQNetwork`, with its
H_layers + L_layers blocks stacked once (4 + 4 -> 8 in the paper) and run once per forward:
what the HRM adds over a plain transformer of the same depth is the H/L recurrence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from hrm_agent.config import require
from hrm_agent.models.base import Feedforward
from hrm_agent.models.hrm import VOCAB_SIZE, TokenInput, check_blocks
from hrm_agent.models.layers import Block, compile_kwargs, lecun_linear


@dataclass(frozen=True)
class TransformerConfig:
    """HRMConfig's fields that a flat stack of blocks has; defaults are the paper HRM's."""

    seq_len: int  # observation tokens, set from the env
    grid_width: int = 0  # the grid's row length, set from the env; rope2d needs it
    kind: Literal["transformer"] = "transformer"
    vocab_size: int = VOCAB_SIZE
    num_actions: int = 4
    hidden_size: int = 64
    num_heads: int = 2
    layers: int = 8  # HRM's H_layers + L_layers
    expansion: float = 4.0
    segments: int = 1  # no recurrence: every segment gives the same Q
    rope_theta: float = 10_000.0
    pos_encoding: Literal["rope", "rope2d"] = "rope"
    readout: Literal["last", "mean"] = "last"
    task_token: bool = True
    attn_backend: Literal["auto", "flash", "sdpa", "math"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU

    def __post_init__(self):
        for name in ["seq_len", "vocab_size", "num_actions", "hidden_size", "num_heads", "layers"]:
            value = getattr(self, name)
            require(value >= 1, f"model.{name} must be >= 1, got {value}")
        require(self.segments == 1, f"model.segments must be 1 without recurrence, got {self.segments}")
        check_blocks(self)

    @property
    def positions(self) -> int:
        return self.seq_len + int(self.task_token)


class TransformerQNetwork(TokenInput, Feedforward):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = self.config = config
        self.init_input(c)
        self.blocks = nn.ModuleList(Block(c.hidden_size, c.num_heads, c.expansion, c.attn_backend)
                                    for _ in range(c.layers))
        self.lm_head = lecun_linear(c.hidden_size, c.num_actions)

    def compile(self, **kwargs) -> None:
        super().compile(**compile_kwargs(self.config.attn_backend, kwargs))

    def q_values(self, inputs: Tensor) -> Tensor:
        with self._autocast(inputs.device):
            z = self.embed(inputs)
            rope = self.rope.tables(z.dtype)
            for block in self.blocks:
                z = block(z, rope)
            return self.read_q(z)
