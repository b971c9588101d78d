"""gymnasium interfaces to the batched core: one env per id, and a same-step-autoreset vector env.

`gymnasium.make("hrm_agent/FourRooms-v0")` (or `Maze-v0`) gives one CPU env with numpy
observations; `gymnasium.make_vec(id, num_envs=B)` gives the batched core behind the
`VectorEnv` API. The ids are registered without `max_episode_steps`: the env truncates itself
after `max_steps` (80), and a second TimeLimit on top could only disagree with it. Pass
`max_steps=...` to change the episode length.
"""
from __future__ import annotations

from typing import Any, ClassVar

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from hrm_agent.envs.core import DynamicDoorsEnv
from hrm_agent.envs.fourrooms import FourRooms
from hrm_agent.envs.maze import Maze
from hrm_agent.envs.render import render_ascii, render_rgb

def _spaces(core: DynamicDoorsEnv) -> tuple[spaces.Box, spaces.Discrete]:
    """Observation: the row-major token crop (ASCII codes); action: N, E, S, W."""
    return (spaces.Box(0, 127, (core.seq_len,), np.uint8), spaces.Discrete(core.num_actions))


def _check_options(options: dict[str, Any] | None) -> None:
    if options:
        raise ValueError(f"unknown reset options {sorted(options)}; these envs take none "
                         "(set p_change, max_steps, ... when making the env)")


class GridEnv(gymnasium.Env):
    """One env of `core_class` (B=1, CPU). Keyword arguments go to the core class.

    Episodes end as in the core, but gymnasium style: the step that ends an episode returns its
    last observation, and the next episode starts at `reset()`."""

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}
    core_class: ClassVar[type[DynamicDoorsEnv]]

    def __init__(self, render_mode: str | None = None, **kwargs: Any):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, "
                             f"got {render_mode!r}")
        self.render_mode = render_mode
        self.core = self.core_class(1, **kwargs)
        self.observation_space, self.action_space = _spaces(self.core)
        self._grid: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        _check_options(options)
        obs = self.core.reset(seed=seed)[0].numpy()
        self._grid = obs.reshape(self.core.height, self.core.width)
        return obs, {}

    def step(self, action):
        _, reward, terminated, truncated, info = self.core.step(np.asarray(action).reshape(1))
        obs = info["final_obs"][0].numpy()
        self._grid = obs.reshape(self.core.height, self.core.width)
        return (obs, float(reward[0]), bool(terminated[0]), bool(truncated[0]),
                {"success": bool(info["success"][0]), "doors_changed": bool(info["doors_changed"][0])})

    def render(self):
        if self.render_mode == "ansi":
            return render_ascii(self._grid)
        if self.render_mode == "rgb_array":
            return render_rgb(self._grid)
        return None


class FourRoomsEnv(GridEnv):
    core_class = FourRooms


class MazeEnv(GridEnv):
    core_class = Maze


class GridVectorEnv(VectorEnv):
    """`num_envs` envs of `core_class` behind gymnasium's VectorEnv API (numpy in and out).

    Same-step autoreset: a finished env's returned observation already starts its next episode;
    `info["final_obs"]` (object array, set where `info["_final_obs"]`) holds the last one and
    `info["final_info"]` its episode's `success`, `episode_return` and `episode_length`."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}
    core_class: ClassVar[type[DynamicDoorsEnv]]

    def __init__(self, num_envs: int = 1, **kwargs: Any):
        self.core = self.core_class(num_envs, **kwargs)
        self.num_envs = num_envs
        self.single_observation_space, self.single_action_space = _spaces(self.core)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        _check_options(options)
        return self.core.reset(seed=seed).cpu().numpy(), {}

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.core.step(torch.as_tensor(np.asarray(actions)))
        done = (terminated | truncated).cpu().numpy()
        last = info["final_obs"].cpu().numpy()
        final_obs = np.full(self.num_envs, None, dtype=object)
        for i in np.flatnonzero(done):
            final_obs[i] = last[i]
        final_info: dict[str, np.ndarray] = {}
        for key in ("success", "episode_return", "episode_length"):
            final_info[key], final_info[f"_{key}"] = info[key].cpu().numpy(), done
        infos = {"final_obs": final_obs, "_final_obs": done, "final_info": final_info,
                 "_final_info": done}
        return (obs.cpu().numpy(), reward.cpu().numpy(), terminated.cpu().numpy(),
                truncated.cpu().numpy(), infos)


class FourRoomsVectorEnv(GridVectorEnv):
    core_class = FourRooms


class MazeVectorEnv(GridVectorEnv):
    core_class = Maze

