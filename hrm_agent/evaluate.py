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
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hrm_agent.agent import Agent
from hrm_agent.models import QNetwork


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
def run_episodes(model: QNetwork, env, *, carry_z: bool, seed: int,
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


def evaluate(model: QNetwork, env_config, *, carry_z: bool, episodes: int, seed: int,
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


MODES = {True: "Carry Z", False: "Reset Z"}  # eval mode names, keyed by carry_z


def find_agents(directory: str | Path, env: str) -> dict[str, Path]:
    """The exported agents `<directory>/<env>-<name>/agent.pt`, by name; an error if none."""
    paths = sorted(Path(directory).glob(f"{env}-*/agent.pt"))
    if not paths:
        raise FileNotFoundError(f"no {env} agents in {directory!r} (expected {env}-*/agent.pt); "
                                "train some with `make pretrained` or pass a checkpoint path")
    return {path.parent.name: path for path in paths}


def compare_agents(checkpoints: dict[str, str | Path], *, episodes: int, seed: int,
                   device="cpu", record: bool = False) -> dict[str, Episodes]:
    """Each checkpoint evaluated in both eval modes (Carry Z, Reset Z) on the same episodes."""
    from hrm_agent.trainer import load_agent  # trainer imports this module

    results = {}
    for label, path in checkpoints.items():
        model, config = load_agent(path, device)
        for carry_z, mode in MODES.items():
            env = config.env.make(episodes, device=device, seed=seed)
            results[f"{label} | eval {mode}"] = run_episodes(model, env, carry_z=carry_z,
                                                             seed=seed, record=record)
    return results


def summary_table(results: dict[str, Episodes]) -> str:
    """A fixed-width table of the metrics with 95% intervals, one row per result."""
    width = max(len(label) for label in results)
    lines = [f"{'agent | eval mode':<{width}}  {'success [95% CI]':>22}  {'length':>6}  "
             f"{'return':>7}  {'len/BFS':>7}  {'N':>5}"]
    for label, episodes in results.items():
        m = episodes.metrics()
        lo, hi = proportion_ci(episodes.success)
        lines.append(f"{label:<{width}}  {m['success_rate']:>6.3f} [{lo:.3f}, {hi:.3f}]  "
                     f"{m['mean_episode_length']:>6.2f}  {m['mean_return']:>7.3f}  "
                     f"{m['mean_optimality_ratio']:>7.3f}  {m['episodes']:>5}")
    return "\n".join(lines)
