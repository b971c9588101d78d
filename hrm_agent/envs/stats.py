"""Episode statistics of a fixed policy (random or BFS oracle): `python -m hrm_agent envstats`.

They calibrate the learning curves: what success rate and episode length a policy that knows
nothing (random) or everything about the current doors (oracle) gets, and how often doors
really change.
"""
from __future__ import annotations

import torch

from hrm_agent.envs import make_env
from hrm_agent.envs.oracle import grid_path_lengths, oracle_actions

POLICIES = ("random", "oracle")
POLICY_LABELS = {"random": "random policy", "oracle": "BFS oracle"}  # in tables and legends


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return policy


def policy_actions(policy: str, env, generator: torch.Generator) -> torch.Tensor:
    """(B,) long: the next actions of `policy` in every env of `env` (random: from `generator`)."""
    if policy == "random":
        return torch.randint(env.num_actions, (env.num_envs,), generator=generator, device=env.device)
    return oracle_actions(env)


def envstats(env: str, policy: str, *, episodes: int, seed: int, num_envs: int = 256,
             device: str = "cpu", **env_kwargs) -> dict:
    """Run `policy` in `num_envs` parallel envs of `env` until exactly `episodes` have finished.

    Env i counts its first `episodes // num_envs` (+1 for the first `episodes % num_envs` envs)
    episodes, so the sample is not biased towards short episodes, as "the first N episodes to
    finish" would be. Metrics over the counted episodes:
    - success_rate, mean_return, mean_episode_length (a failure counts as `max_steps`, as the
      paper's `val_avg_episode_length`);
    - change_rate_per_step: fraction of steps on which the set of closed doors changed;
    - mean_oracle_path_length (over reachable episodes) and unreachable_fraction: the BFS path
      on the first observation that shows the walls. Under the authors' quirk (default) the
      reset observation shows no doors or fixed walls, so this is the observation after the
      first step; with `draw_doors_at_reset=True` it is the reset observation.
    """
    check_policy(policy)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    num_envs = min(num_envs, episodes)
    batch = make_env(env, num_envs, device=device, seed=seed, **env_kwargs)
    generator = torch.Generator(batch.device).manual_seed(seed)
    quota = torch.full((num_envs,), episodes // num_envs, device=batch.device)
    quota[: episodes % num_envs] += 1
    counted = torch.zeros_like(quota)
    records: dict[str, list[torch.Tensor]] = {"success": [], "return": [], "length": [], "path": []}
    steps = changes = 0

    def path_lengths(obs: torch.Tensor) -> torch.Tensor:
        return grid_path_lengths(obs.view(-1, batch.height, batch.width))

    obs = batch.reset()
    paths = path_lengths(obs)  # replaced after the first step under the quirk
    while bool((counted < quota).any()):
        actions = policy_actions(policy, batch, generator)
        first_step = (batch.elapsed == 0).nonzero().squeeze(1)
        obs, _, terminated, truncated, info = batch.step(actions)
        if not batch.draw_doors_at_reset:
            paths[first_step] = path_lengths(info["final_obs"][first_step])
        active = counted < quota
        steps += int(active.sum())
        changes += int((active & info["doors_changed"]).sum())
        done = (terminated | truncated) & active
        for key, value in (("success", info["success"]), ("return", info["episode_return"]),
                           ("length", info["episode_length"]), ("path", paths)):
            records[key].append(value[done])
        counted += done
        if batch.draw_doors_at_reset:
            reset = (terminated | truncated).nonzero().squeeze(1)
            paths[reset] = path_lengths(obs[reset])
    success, ret, length, path = (torch.cat(records[key]).double()
                                  for key in ("success", "return", "length", "path"))
    reachable = path >= 0
    return {
        "env": env, "policy": policy, "seed": seed, "episodes": episodes,
        "success_rate": float(success.mean()),
        "mean_episode_length": float(length.mean()),  # a failed episode lasts max_steps
        "mean_return": float(ret.mean()),
        "change_rate_per_step": changes / steps,
        "mean_oracle_path_length": float(path[reachable].mean()),
        "unreachable_fraction": float((~reachable).double().mean()),
    }


def reference_stats(env: str, *, episodes: int, seed: int, **kwargs) -> dict[str, dict]:
    """`envstats` of every policy, by its label: the reference lines of the learning curves."""
    return {POLICY_LABELS[policy]: envstats(env, policy, episodes=episodes, seed=seed, **kwargs)
            for policy in POLICIES}
