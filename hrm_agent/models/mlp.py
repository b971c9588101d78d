"""An MLP Q-network on the flattened token embeddings: the simplest baseline, no spatial prior."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from hrm_agent.config import require
from hrm_agent.models.base import Feedforward, check_observations
from hrm_agent.models.hrm import VOCAB_SIZE


@dataclass(frozen=True)
class MLPConfig:
    seq_len: int  # observation tokens, set from the env
    grid_width: int  # set from the env; unused (the MLP sees the grid flattened)
    kind: Literal["mlp"] = "mlp"
    vocab_size: int = VOCAB_SIZE
    num_actions: int = 4
    embed_size: int = 8
    hidden_size: int = 256
    layers: int = 2  # hidden layers
    segments: int = 1  # no recurrence: every segment gives the same Q

    def __post_init__(self):
        for name in ["seq_len", "vocab_size", "num_actions", "embed_size", "hidden_size", "layers"]:
            value = getattr(self, name)
            require(value >= 1, f"model.{name} must be >= 1, got {value}")
        require(self.segments == 1, f"model.segments must be 1 without recurrence, got {self.segments}")


class MLPQNetwork(Feedforward):
    def __init__(self, config: MLPConfig):
        super().__init__()
        c = self.config = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.embed_size)
        layers: list[nn.Module] = [nn.Flatten()]
        width = c.seq_len * c.embed_size
        for _ in range(c.layers):
            layers += [nn.Linear(width, c.hidden_size), nn.ReLU()]
            width = c.hidden_size
        self.mlp = nn.Sequential(*layers, nn.Linear(width, c.num_actions))

    def q_values(self, inputs: Tensor) -> Tensor:
        check_observations(inputs, self.config.seq_len)
        return self.mlp(self.embed_tokens(inputs.long()))
