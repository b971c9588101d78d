"""What a training run is: environment, model and DQN settings, loaded from a profile file.

A profile is a TOML file with `[env]`, `[model]` and `[train]` tables (see `hrm_agent/profiles/`).
Fields left out take the paper's values, which are the dataclass defaults below, so a profile
lists exactly what it changes. `--set train.lr=3e-4` style overrides are applied on top.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hrm_agent.config import ConfigError, apply_overrides, build, require, to_dict
from hrm_agent.models import HRMConfig, ModelConfig, model_config

PROFILE_DIR = Path(__file__).parent / "profiles"
GRID_SHAPE = {"fourrooms": (11, 11), "maze": (11, 13)}  # paper-notes §1.2-1.3: the crops, rows x cols


@dataclass(frozen=True)
class EnvConfig:
    """The dynamic maze (paper-notes §1); defaults are the authors' code."""

    name: Literal["fourrooms", "maze"] = "fourrooms"
    num_envs: int = 256  # parallel training envs
    p_change: float = 0.05  # door redraw probability per env step
    max_steps: int = 80
    door_redraw: Literal["joint", "independent"] = "joint"  # maze only; the paper text says independent
    draw_doors_at_reset: bool = False  # the authors' code does not draw doors in the reset observation

    def __post_init__(self):
        require(self.num_envs >= 1, f"env.num_envs must be >= 1, got {self.num_envs}")
        require(0.0 <= self.p_change <= 1.0, f"env.p_change must be in [0, 1], got {self.p_change}")
        require(self.max_steps >= 1, f"env.max_steps must be >= 1, got {self.max_steps}")

    @property
    def seq_len(self) -> int:
        rows, cols = GRID_SHAPE[self.name]
        return rows * cols

    @property
    def grid_width(self) -> int:
        return GRID_SHAPE[self.name][1]

    def make(self, num_envs: int | None = None, *, device="cpu", seed: int | None = None, **overrides):
        """Build the batched environment (`num_envs` defaults to the training count)."""
        from hrm_agent.envs import make_env

        kwargs: dict[str, Any] = dict(p_change=self.p_change, max_steps=self.max_steps,
                                      draw_doors_at_reset=self.draw_doors_at_reset)
        if self.name == "maze":
            kwargs["door_redraw"] = self.door_redraw
        kwargs.update(overrides)
        num_envs = self.num_envs if num_envs is None else num_envs  # 0 is an error, not "default"
        return make_env(self.name, num_envs, device=device, seed=seed, **kwargs)


@dataclass(frozen=True)
class TrainConfig:
    """DQN settings (paper-notes §3). Defaults are the paper profile."""

    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    carry_z: bool = True  # Carry Z (True) or Reset Z (False), paper §2.5
    total_steps: int = 200_000  # optimizer steps ("training minibatches" in the paper's plots)
    max_minutes: float = 0.0  # stop (and checkpoint) after this much training time (collect +
    # learn; validation and checkpoints not counted, as the paper times only training steps); 0 = off
    batch_size: int = 256
    buffer_capacity: int = 2**20
    learning_starts: int = 256  # transitions in the buffer before the first update
    env_steps_per_batch: int = 1  # batched env steps collected per minibatch (= per `segments` updates)
    gamma: float = 0.95
    n_step: int = 1  # 1 = the paper's TD(0); n > 1: n-step returns (ours, for short CPU runs)
    target_decay: float = 0.999  # Polyak: target <- decay * target + (1 - decay) * online, every step
    target_init: Literal["independent", "copy"] = "independent"  # authors: a separately initialised net
    eps_start: float = 1.0
    eps_end: float = 0.33
    eps_decay_steps: int = 300_000
    # "batch": the authors' Reset Z ε, one coin for the whole batch (random actions without
    # running the model, or every env greedy); "per_env": each env its own coin
    eps_mode: Literal["per_env", "batch"] = "per_env"
    lr: float = 1e-4
    lr_warmup_steps: int = 10_000
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999  # the authors' config says 0.95 but never passes it (paper-notes §6.7)
    task_lr: float = 1e-2  # SignSGD on the task token
    task_weight_decay: float = 0.1
    val_interval: int = 5_000  # optimizer steps between validations
    val_episodes: int = 256
    val_seed: int = 10_000  # validation always uses the same episodes, so curves compare
    checkpoint_interval: int = 5_000
    log_interval: int = 200
    save_replay: bool = False  # persist the replay buffer in checkpoints (exact resume)
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    # Execution (not in the checkpoint's tensors, may change on resume). "auto": on on CUDA.
    compile: Literal["auto", "on", "off"] = "auto"  # torch.compile the network's segment
    cuda_graphs: Literal["auto", "on", "off"] = "auto"  # replay acting and learn steps as CUDA graphs
    # the HRM's gradient-free updates as one Triton kernel per block; "auto": on CUDA, where
    # the model is an HRM the kernel runs (triton, power-of-two widths)
    fused_blocks: Literal["auto", "on", "off"] = "auto"
    # AdamATan2's update as one Triton kernel for all parameters; "auto": on CUDA, where triton is
    fused_optimizer: Literal["auto", "on", "off"] = "auto"
    # the SwiGLUs' hidden layer as one Triton kernel forward and one backward, which never store
    # the gate/up output; "auto": on CUDA, where triton runs the model's SwiGLUs
    fused_swiglu: Literal["auto", "on", "off"] = "auto"

    def __post_init__(self):
        positive = ["total_steps", "n_step", "batch_size", "buffer_capacity", "env_steps_per_batch",
                    "val_interval", "val_episodes", "checkpoint_interval", "log_interval"]
        for name in positive:
            value = getattr(self, name)
            require(value >= 1, f"train.{name} must be >= 1, got {value}")
        for name in ["gamma", "target_decay", "eps_start", "eps_end", "beta1", "beta2"]:
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"train.{name} must be in [0, 1], got {value}")
        for name in ["lr", "task_lr", "weight_decay", "task_weight_decay", "max_minutes",
                     "learning_starts", "lr_warmup_steps", "eps_decay_steps", "num_threads"]:
            value = getattr(self, name)
            require(value >= 0, f"train.{name} must be >= 0, got {value}")
        require(self.eps_mode == "per_env" or not self.carry_z,
                "train.eps_mode='batch' skips the model on random steps, which breaks the Carry Z "
                "chain of z; use it only with carry_z=false (as the authors did)")


@dataclass(frozen=True)
class ExperimentConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=lambda: HRMConfig(seq_len=121, grid_width=11))
    train: TrainConfig = field(default_factory=TrainConfig)
    description: str = ""

    def __post_init__(self):
        require(self.model.seq_len == self.env.seq_len,
                f"model.seq_len={self.model.seq_len} does not match env {self.env.name!r} "
                f"(seq_len {self.env.seq_len}); leave model.seq_len out of the profile")
        require(self.model.grid_width == self.env.grid_width,
                f"model.grid_width={self.model.grid_width} does not match env {self.env.name!r} "
                f"(grid_width {self.env.grid_width}); leave model.grid_width out of the profile")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def experiment_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Validate a nested mapping (profile + overrides, or a checkpoint's config)."""
    data = dict(data)
    unknown = set(data) - {f.name for f in dataclasses.fields(ExperimentConfig)}
    if unknown:
        raise ConfigError(f"unknown profile section(s) {sorted(unknown)}; "
                          "expected [env], [model], [train] and `description`")
    env = build(EnvConfig, data.get("env", {}), prefix="env.")
    model_data, train_data = dict(data.get("model", {})), dict(data.get("train", {}))
    if "compile" in model_data:  # before train.compile, configs held model.compile (a bool)
        legacy = model_data.pop("compile")
        train_data.setdefault("compile", "on" if legacy is True else "auto")
    if isinstance(train_data.get("fused_blocks"), bool):  # a bool before "auto" (false: default)
        train_data["fused_blocks"] = "on" if train_data["fused_blocks"] else "auto"
    # removed (its backward was slower than cuDNN's on an H100): stored configs name it, and
    # "auto" or "off" now both mean what it means everywhere else, SDPA attention
    if train_data.pop("fused_attention", "off") == "on":
        raise ConfigError("train.fused_attention was removed: attention runs SDPA's kernels "
                          "(cuDNN's flash attention on an H100, faster than ours was)")
    model = model_config({"seq_len": env.seq_len, "grid_width": env.grid_width, **model_data})
    train = build(TrainConfig, train_data, prefix="train.")
    return ExperimentConfig(env=env, model=model, train=train,
                            description=data.get("description", ""))


def load_profile(name_or_path: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a profile by name (`cpu-fourrooms`) or path, then apply `--set` overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ConfigError(f"no profile {name_or_path!r}; available: {', '.join(list_profiles())} "
                          "(or give a path to a .toml file)")
    with path.open("rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"profile {path} is not valid TOML: {exc}") from None
    return experiment_from_dict(apply_overrides(data, overrides or []))
