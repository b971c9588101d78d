"""The paper's two dynamic-door environments as batched torch tensors (paper-notes §1).

`FourRooms` and `Maze` step B envs in one call; `make_env` builds one by name. The gymnasium
versions live in `hrm_agent.envs.gym`, imported only by whoever uses them, so training needs no
gymnasium (`import hrm_agent` registers their ids when gymnasium is installed).
"""
from __future__ import annotations

from hrm_agent.envs.core import DynamicDoorsEnv
from hrm_agent.envs.fourrooms import FourRooms
from hrm_agent.envs.grid import (ACTION_NAMES, AGENT, DOOR, FLOOR, GOAL, OBSTACLE_TOKENS, START,
                                 WALL_H, WALL_V, is_obstacle)
from hrm_agent.envs.maze import Maze
from hrm_agent.envs.oracle import (distances, grid_path_lengths, grid_shortest_path,
                                   optimal_q, oracle_actions, shortest_path_lengths)

ENVS: dict[str, type[DynamicDoorsEnv]] = {"fourrooms": FourRooms, "maze": Maze}


def make_env(name: str, num_envs: int = 1, **kwargs) -> DynamicDoorsEnv:
    """The batched env `name` ("fourrooms" or "maze") with `num_envs` envs; kwargs go to its class."""
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r}; choose one of {', '.join(ENVS)}")
    return ENVS[name](num_envs, **kwargs)


__all__ = [
    "ACTION_NAMES", "AGENT", "DOOR", "ENVS", "FLOOR", "GOAL", "OBSTACLE_TOKENS", "START",
    "WALL_H", "WALL_V", "DynamicDoorsEnv", "FourRooms", "Maze", "distances",
    "grid_path_lengths", "grid_shortest_path", "is_obstacle", "make_env", "optimal_q",
    "oracle_actions", "shortest_path_lengths",
]
