"""Environment speed: `python -m hrm_agent bench env --json`.

Env-steps per second (num_envs x calls / s) of the batched envs at B = 1, 256 and 4096 under
uniformly random actions, next to Farama minigrid's `MiniGrid-FourRooms-v0` stepped one env at
a time in this process (the usual single-env baseline). Actions are drawn before the clock
starts, so only `step` is timed. Needs the `bench` extra (minigrid).
"""
from __future__ import annotations

import time

import torch

from hrm_agent.envs import ENVS

BATCH_SIZES = (1, 256, 4096)


def _rate(step, batch: int, seconds: float) -> float:
    """Env-steps per second of calling `step(i)` for about `seconds` (after a short warm-up)."""
    for i in range(10):
        step(i)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(10):
            step(calls)
            calls += 1
    return batch * calls / elapsed


def batched_rate(name: str, num_envs: int, seconds: float, seed: int = 0) -> float:
    env = ENVS[name](num_envs, seed=seed)
    env.reset()
    actions = torch.randint(env.num_actions, (64, num_envs), generator=torch.Generator().manual_seed(seed))
    return _rate(lambda i: env.step(actions[i % 64]), num_envs, seconds)


def minigrid_rate(seconds: float, seed: int = 0) -> float:
    import gymnasium
    import minigrid  # noqa: F401  (registers the MiniGrid ids)

    env = gymnasium.make("MiniGrid-FourRooms-v0")
    env.reset(seed=seed)
    env.action_space.seed(seed)

    def step(_):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()

    return _rate(step, 1, seconds)


def run(quick: bool = False) -> dict:
    seconds = 0.2 if quick else 2.0
    result: dict = {"torch_threads": torch.get_num_threads(), "seconds_per_measurement": seconds}
    for name in ENVS:
        for num_envs in BATCH_SIZES:
            result[f"{name}_B{num_envs}_steps_per_s"] = round(batched_rate(name, num_envs, seconds))
    result["minigrid_fourrooms_steps_per_s"] = round(minigrid_rate(seconds))
    result["fourrooms_B4096_over_minigrid"] = round(
        result["fourrooms_B4096_steps_per_s"] / result["minigrid_fourrooms_steps_per_s"], 1)
    return result
