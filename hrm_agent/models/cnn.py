"""A small CNN Q-network over the token grid: the baseline that shows the DQN loop, envs and
settings can learn navigation on a CPU in minutes (issue 14).

Each cell's token id is embedded (131 -> 8), the grid (rows x cols) goes through 3x3
convolutions that keep its size, and an MLP on the flattened feature map gives Q. No
recurrence: the seed and carry are trivial (`Feedforward`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from hrm_agent.config import require
from hrm_agent.models.base import Feedforward, check_observations
from hrm_agent.models.hrm import VOCAB_SIZE


@dataclass(frozen=True)
class CNNConfig:
    seq_len: int  # observation tokens, set from the env
    grid_width: int  # the grid's row length (11 four-rooms, 13 maze), set from the env
    kind: Literal["cnn"] = "cnn"
    vocab_size: int = VOCAB_SIZE
    num_actions: int = 4
    embed_size: int = 8
    channels: int = 16
    conv_layers: int = 3
    mlp_hidden: int = 128
    segments: int = 1  # no recurrence: every segment gives the same Q

    def __post_init__(self):
        for name in ["seq_len", "grid_width", "vocab_size", "num_actions", "embed_size",
                     "channels", "conv_layers", "mlp_hidden"]:
            value = getattr(self, name)
            require(value >= 1, f"model.{name} must be >= 1, got {value}")
        require(self.segments == 1, f"model.segments must be 1 without recurrence, got {self.segments}")
        require(self.seq_len % self.grid_width == 0,
                f"model.grid_width={self.grid_width} does not divide seq_len={self.seq_len}")

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.seq_len // self.grid_width, self.grid_width


class CNNQNetwork(Feedforward):
    def __init__(self, config: CNNConfig):
        super().__init__()
        c = self.config = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.embed_size)
        convs: list[nn.Module] = []
        for i in range(c.conv_layers):
            convs += [nn.Conv2d(c.embed_size if i == 0 else c.channels, c.channels, 3, padding=1),
                      nn.ReLU()]
        self.convs = nn.Sequential(*convs)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c.channels * c.seq_len, c.mlp_hidden),
                                  nn.ReLU(), nn.Linear(c.mlp_hidden, c.num_actions))

    def q_values(self, inputs: Tensor) -> Tensor:
        check_observations(inputs, self.config.seq_len)
        x = self.embed_tokens(inputs.long())  # (B, S, E)
        x = x.transpose(1, 2).reshape(inputs.shape[0], -1, *self.config.grid_shape)
        return self.head(self.convs(x))

    def extra_repr(self) -> str:
        rows, cols = self.config.grid_shape
        return f"grid={rows}x{cols}, parameters={self.num_parameters():,}"
