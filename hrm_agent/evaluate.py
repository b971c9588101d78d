"""Greedy evaluation: the paper's validation metrics (paper-notes §4.1) plus BFS optimality.

One fresh episode per env, ε = 0, at most `max_steps` steps. Metrics:
- success_rate: fraction of episodes that reach the goal (the paper's
  `val_frac_envs_terminated_reward_1`);
- mean_episode_length: steps until termination, a failed episode counting as `max_steps`;
- mean_return: undiscounted return, bump penalties included (`val_avg_reward`);
- mean_optimality_ratio (ours): episode length / BFS shortest path length from the start under
  the walls and doors at t=0, over the successful episodes whose goal was reachable at t=0.
  Door changes can make it smaller or larger than 1.

`policy_episodes` runs the reference policies of `envstats` (random, BFS oracle) on the same
episodes, and `compare_agents` puts agents and references side by side.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hrm_agent.agent import Agent
from hrm_agent.envs.stats import POLICIES, POLICY_LABELS, check_policy, policy_actions
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

    def optimality_ratios(self) -> np.ndarray:
        """Length / BFS optimum of the successful episodes whose goal was reachable at t=0."""
        solved = self.success & (self.optimal_length > 0)
        return self.length[solved] / self.optimal_length[solved]

    def metrics(self) -> dict[str, float]:
        ratio = self.optimality_ratios()
        return {
            "episodes": int(self.success.size),
            "success_rate": float(self.success.mean()),
            "mean_episode_length": float(self.length.mean()),
            "mean_return": float(self.ret.mean()),
            "mean_optimality_ratio": float(ratio.mean()) if ratio.size else float("nan"),
        }


@torch.no_grad()
def run_episodes(model: QNetwork, env, *, carry_z: bool, seed: int, record: bool = False,
                 forward=None) -> Episodes:
    """Run one greedy episode in each of `env.num_envs` envs, from `env.reset(seed)`; `forward`
    as `Agent`'s."""
    was_training = model.training
    model.eval()
    agent = Agent(model, env.num_envs, carry_z, forward=forward)

    def act(obs, episode_start):
        step = agent.act(obs, episode_start)
        return step.actions, step.q

    result = _rollout(env, act, seed=seed, record=record)
    model.train(was_training)
    return result


def policy_episodes(policy: str, env, *, seed: int, record: bool = False) -> Episodes:
    """Run one episode of a reference policy ("random" or "oracle", as `envstats`) in each env
    of `env`, from `env.reset(seed)`: the same episodes `run_episodes` gives an agent."""
    check_policy(policy)
    generator = torch.Generator(env.device).manual_seed(seed)
    return _rollout(env, lambda obs, start: (policy_actions(policy, env, generator), None),
                    seed=seed, record=record)


def _rollout(env, act, *, seed: int, record: bool) -> Episodes:
    """The first episode of every env under `act(obs, episode_start) -> (actions, q or None)`."""
    n = env.num_envs
    device = env.device
    obs = env.reset(seed=seed)
    optimal = env.shortest_path_lengths().cpu().numpy()
    episode_start = torch.ones(n, dtype=torch.bool, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    success = torch.zeros(n, dtype=torch.bool, device=device)
    length = torch.zeros(n, dtype=torch.long, device=device)
    ret = torch.zeros(n, dtype=torch.float32, device=device)
    frames, actions, qs = [obs], [], []
    while not bool(finished.all()):
        step_actions, q = act(obs, episode_start)
        obs, _, terminated, truncated, info = env.step(step_actions)
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
            actions.append(step_actions)
            qs.append(q)
    result = Episodes(success.cpu().numpy(), length.cpu().numpy(), ret.cpu().numpy(), optimal)
    if record:
        result.frames = torch.stack(frames).cpu()
        result.actions = torch.stack(actions).cpu()
        result.q = None if qs[0] is None else torch.stack(qs).cpu()
    return result


def evaluate(model: QNetwork, env_config, *, carry_z: bool, episodes: int, seed: int,
             device="cpu", forward=None) -> dict[str, float]:
    """The validation metrics over `episodes` fresh episodes (all run in parallel); `forward`
    as `Agent`'s."""
    env = env_config.make(episodes, device=device, seed=seed)
    return run_episodes(model, env, carry_z=carry_z, seed=seed, forward=forward).metrics()


def proportion_ci(successes: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a success rate (better than normal near 0 and 1)."""
    n = successes.size
    p = successes.mean()
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return float(centre - half), float(centre + half)


def bootstrap_mean_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0,
                      alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of a mean, NaN for fewer than 2 values.

    It stays within the values' range, so the interval of a mean length / BFS optimum ratio
    stays > 0 (a normal interval of a few skewed ratios crosses 0)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < 2:
        return float("nan"), float("nan")
    means = x[np.random.default_rng(seed).integers(0, x.size, (n_boot, x.size))].mean(1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def interval_stats(episodes: Episodes) -> dict[str, tuple[float, float, float]]:
    """(estimate, 95% low, 95% high) of the success rate (Wilson), the mean length and the mean
    length / BFS optimum (bootstrap, within the values' range; NaN without a successful
    episode), for tables and figures."""
    ratio = episodes.optimality_ratios()
    return {"success": (float(episodes.success.mean()), *proportion_ci(episodes.success)),
            "length": (float(episodes.length.mean()), *bootstrap_mean_ci(episodes.length)),
            "ratio": (float(ratio.mean()) if ratio.size else float("nan"), *bootstrap_mean_ci(ratio))}


NO_SUCCESS = "no successful episode"
MODES = {True: "Carry Z", False: "Reset Z"}  # eval mode names, keyed by carry_z


def find_agents(directory: str | Path, env: str) -> dict[str, Path]:
    """The exported agents `<directory>/<env>-<name>/agent.pt`, by name; an error if none."""
    paths = sorted(Path(directory).glob(f"{env}-*/agent.pt"))
    if not paths:
        raise FileNotFoundError(f"no {env} agents in {directory!r} (expected {env}-*/agent.pt); "
                                "train some with `make pretrained` or pass a checkpoint path")
    return {path.parent.name: path for path in paths}


def compare_agents(checkpoints: dict[str, str | Path], *, episodes: int, seed: int,
                   device="cpu", record: bool = False, compile: bool = False,
                   policies: tuple[str, ...] = POLICIES) -> dict[str, Episodes]:
    """Every checkpoint, then every reference policy (labelled as in `POLICY_LABELS`), on the
    same episodes: a recurrent network in both eval modes (Carry Z, Reset Z), any other once.
    All checkpoints must share their env settings, so that the episodes are the same.
    `compile`: torch.compile the agents (`load_agent`)."""
    from hrm_agent.trainer import load_agent  # trainer imports this module

    if not checkpoints:
        raise ValueError("no checkpoints to compare")
    results, env_config = {}, None
    for label, path in checkpoints.items():
        model, config = load_agent(path, device, compile=compile)
        env_config = env_config or config.env
        if replace(config.env, num_envs=1) != replace(env_config, num_envs=1):
            raise ValueError(f"{path} was trained on other env settings than the first agent "
                             f"({config.env} vs {env_config}); compare agents of one env")
        modes = MODES.items() if model.recurrent else [(False, None)]
        for carry_z, mode in modes:
            env = config.env.make(episodes, device=device, seed=seed)
            name = label if mode is None else f"{label} | eval {mode}"
            results[name] = run_episodes(model, env, carry_z=carry_z, seed=seed, record=record)
    for policy in policies:
        env = env_config.make(episodes, device=device, seed=seed)
        results[POLICY_LABELS[check_policy(policy)]] = policy_episodes(policy, env, seed=seed,
                                                                        record=record)
    return results


def summary_table(results: dict[str, Episodes]) -> str:
    """A fixed-width table of the metrics with 95% intervals, one row per result."""
    width = max(len(label) for label in [*results, "agent | eval mode"])
    digits = {"success": 3, "length": 1, "ratio": 2}

    def interval(key, estimate, lo, hi):
        if np.isnan(estimate):
            return NO_SUCCESS
        f = f".{digits[key]}f"
        return f"{estimate:{f}}" + (" (1 episode)" if np.isnan(lo) else f" [{lo:{f}}, {hi:{f}}]")

    lines = [f"{'agent | eval mode':<{width}}  {'success [95% CI]':>21}  {'length [95% CI]':>21}  "
             f"{'length/BFS [95% CI]':>21}  {'return':>7}  {'N':>5}"]
    for label, episodes in results.items():
        cells = "  ".join(f"{interval(k, *v):>21}" for k, v in interval_stats(episodes).items())
        lines.append(f"{label:<{width}}  {cells}  {episodes.ret.mean():>7.3f}  {episodes.success.size:>5}")
    return "\n".join(lines)
