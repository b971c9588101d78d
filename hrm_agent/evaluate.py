"""Greedy evaluation: the paper's validation metrics (paper-notes §4.1) plus BFS optimality.

One fresh episode per env, ε = 0, at most `max_steps` steps. Metrics:
- success_rate: fraction of episodes that reach the goal (the paper's
  `val_frac_envs_terminated_reward_1`);
- mean_episode_length: steps until termination, a failed episode counting as `max_steps`;
- mean_return: undiscounted return, bump penalties included (`val_avg_reward`);
- mean_optimality_ratio (ours): episode length / BFS shortest path length from the start under
  the walls and doors at t=0, over the successful episodes whose goal was reachable at t=0.
  Door changes can make it smaller or larger than 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hrm_agent.agent import Agent
from hrm_agent.hrm import HRMQNetwork


@dataclass
class Episodes:
    """Per-episode outcomes of one evaluation (numpy arrays of length `episodes`)."""

    success: np.ndarray
    length: np.ndarray
    ret: np.ndarray
    optimal_length: np.ndarray  # BFS length at t=0, -1 when the goal was cut off
    frames: Tensor | None = None  # (steps + 1, B, seq_len) observations, when recorded
    actions: Tensor | None = None  # (steps, B)
    q: Tensor | None = None  # (steps, B, num_actions)

    def metrics(self) -> dict[str, float]:
        solved = self.success & (self.optimal_length > 0)
        ratio = self.length[solved] / self.optimal_length[solved]
        return {
            "episodes": int(self.success.size),
            "success_rate": float(self.success.mean()),
            "mean_episode_length": float(self.length.mean()),
            "mean_return": float(self.ret.mean()),
            "mean_optimality_ratio": float(ratio.mean()) if ratio.size else float("nan"),
        }


@torch.no_grad()
def run_episodes(model: HRMQNetwork, env, *, carry_z: bool, seed: int,
                 record: bool = False) -> Episodes:
    """Run one greedy episode in each of `env.num_envs` envs, from `env.reset(seed)`."""
    was_training = model.training
    model.eval()
    n = env.num_envs
    device = env.device
    obs = env.reset(seed=seed)
    optimal = env.shortest_path_lengths().cpu().numpy()
    agent = Agent(model, n, carry_z)
    episode_start = torch.ones(n, dtype=torch.bool, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    success = torch.zeros(n, dtype=torch.bool, device=device)
    length = torch.zeros(n, dtype=torch.long, device=device)
    ret = torch.zeros(n, dtype=torch.float32, device=device)
    frames, actions, qs = [obs], [], []
    while not bool(finished.all()):
        step = agent.act(obs, episode_start)
        obs, _, terminated, truncated, info = env.step(step.actions)
        done = terminated | truncated
        first = done & ~finished
        success = torch.where(first, info["success"], success)
        length = torch.where(first, info["episode_length"], length)
        ret = torch.where(first, info["episode_return"], ret)
        finished |= done
        episode_start = done
        if record:
            frames.append(torch.where(finished[:, None] & ~first[:, None], frames[-1],
                                      info["final_obs"]))
            actions.append(step.actions)
            qs.append(step.q)
    model.train(was_training)
    result = Episodes(success.cpu().numpy(), length.cpu().numpy(), ret.cpu().numpy(), optimal)
    if record:
        result.frames = torch.stack(frames).cpu()
        result.actions = torch.stack(actions).cpu()
        result.q = torch.stack(qs).cpu()
    return result


def evaluate(model: HRMQNetwork, env_config, *, carry_z: bool, episodes: int, seed: int,
             device="cpu") -> dict[str, float]:
    """The validation metrics over `episodes` fresh episodes (all run in parallel)."""
    env = env_config.make(episodes, device=device, seed=seed)
    return run_episodes(model, env, carry_z=carry_z, seed=seed).metrics()


def proportion_ci(successes: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a success rate (better than normal near 0 and 1)."""
    n = successes.size
    p = successes.mean()
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return float(centre - half), float(centre + half)


def mean_ci(values: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """Normal-approximation interval for a mean."""
    half = z * values.std(ddof=1) / np.sqrt(values.size)
    return float(values.mean() - half), float(values.mean() + half)
