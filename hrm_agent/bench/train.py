"""Training throughput per profile: optimizer steps/s, env steps/s, and where the time goes.

`python -m hrm_agent bench train --json` runs each profile's trainer for a few cycles (after a
warm-up) with the stopwatch on and reports the share of wall time spent outside the model's
forward/backward (env stepping, replay, optimizer, Polyak, bookkeeping). Paper profiles are
timed at their real batch size, so on a CPU they are slow: that number is the point.
"""
from __future__ import annotations

import time

import torch

from hrm_agent.experiment import load_profile
from hrm_agent.trainer import Trainer

PROFILES = ("cpu-fourrooms", "cpu-maze", "paper-fourrooms", "paper-maze")


def time_profile(name: str, seconds: float, min_cycles: int) -> dict[str, float]:
    config = load_profile(name, ["train.device='auto'"])
    trainer = Trainer(config, timed=True)
    tc = config.train
    while len(trainer.replay) < max(tc.learning_starts, tc.batch_size):  # fill, untimed
        trainer.collect()
    trainer.collect()
    trainer.learn()  # warm-up: first-call allocations, lazy init
    trainer.stopwatch.seconds.clear()
    step0, env0 = trainer.global_step, trainer.env_steps
    start = time.perf_counter()
    cycles = 0
    while cycles < min_cycles or time.perf_counter() - start < seconds:
        with trainer.stopwatch("total"):
            for _ in range(tc.env_steps_per_batch):
                trainer.collect()
            trainer.learn()
        cycles += 1
    wall = time.perf_counter() - start
    parts = trainer.stopwatch.seconds
    return {
        "device": str(trainer.device),
        "parameters": trainer.model.num_parameters(),
        "batch_size": tc.batch_size,
        "num_envs": config.env.num_envs,
        "optimizer_steps_per_s": (trainer.global_step - step0) / wall,
        "env_steps_per_s": (trainer.env_steps - env0) / wall,
        "share_outside_model": 1.0 - parts.get("model", 0.0) / parts["total"],
        "seconds": {k: round(v, 3) for k, v in parts.items()},
    }


def run(quick: bool = False) -> dict:
    result = {"threads": torch.get_num_threads()}
    for name in PROFILES:
        paper = name.startswith("paper")
        result[name] = time_profile(name, seconds=2.0 if quick else 20.0,
                                    min_cycles=1 if (quick or paper) else 3)
    return result
