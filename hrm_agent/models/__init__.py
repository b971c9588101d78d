"""The Q-networks: the paper's HRM and the baselines, all behind one interface (`base.py`).

`model.kind` in a profile picks the network; each kind has its own config dataclass, which
validates its own fields. A network plugs in by adding a line to `MODELS`.
"""
from __future__ import annotations

from typing import Any, Mapping, Union

from hrm_agent.config import ConfigError, build
from hrm_agent.models.base import Carry, QNetwork, QOutput, Seed
from hrm_agent.models.cnn import CNNConfig, CNNQNetwork
from hrm_agent.models.hrm import HRMConfig, HRMQNetwork
from hrm_agent.models.mlp import MLPConfig, MLPQNetwork
from hrm_agent.models.transformer import TransformerConfig, TransformerQNetwork

ModelConfig = Union[HRMConfig, CNNConfig, TransformerConfig, MLPConfig]
MODELS: dict[str, tuple[type, type]] = {
    "hrm": (HRMConfig, HRMQNetwork),
    "cnn": (CNNConfig, CNNQNetwork),
    "transformer": (TransformerConfig, TransformerQNetwork),
    "mlp": (MLPConfig, MLPQNetwork),
}


def model_config(data: Mapping[str, Any], prefix: str = "model.") -> ModelConfig:
    """The config of `data["kind"]` (default "hrm", so configs from before kinds load)."""
    kind = data.get("kind", "hrm")
    if kind not in MODELS:
        raise ConfigError(f"{prefix}kind={kind!r} is not one of {', '.join(map(repr, MODELS))}")
    return build(MODELS[kind][0], data, prefix=prefix)


def build_model(config: ModelConfig) -> QNetwork:
    """A freshly initialised network of `config.kind` (on the CPU; `.to(device)` it)."""
    return MODELS[config.kind][1](config)


__all__ = ["MODELS", "Carry", "CNNConfig", "CNNQNetwork", "HRMConfig", "HRMQNetwork",
           "MLPConfig", "MLPQNetwork", "ModelConfig", "QNetwork", "QOutput", "Seed",
           "TransformerConfig", "TransformerQNetwork", "build_model", "model_config"]
