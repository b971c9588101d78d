"""How fast the CPU profile's Q-network can fit the true Q* of four-rooms, per learning rate.

`python -m hrm_agent bench fit --json` regresses the cpu-fourrooms model onto Q* (see
`hrm_agent.qfit`) at each learning rate and reports the curve, the step at which the MSE
first falls below 75% of the constant-output plateau (None: it never left the plateau), and the
greedy success of the fitted network on the validation episodes: a yardstick for what a DQN
run of as many optimizer steps could reach.
"""
from __future__ import annotations

import time

import torch

from hrm_agent.experiment import load_profile
from hrm_agent.qfit import fit_q_star

LEARNING_RATES = (3e-4, 1e-3, 3e-3)


def plateau_exit(records: list[dict], fraction: float = 0.75) -> int | None:
    """First step whose MSE is below `fraction` of the constant-output MSE."""
    return next((r["step"] for r in records if r["mse"] < fraction * r["constant_output_mse"]), None)


def run(quick: bool = False) -> dict:
    steps, every = (20, 10) if quick else (3_000, 250)
    result: dict = {"profile": "cpu-fourrooms", "steps": steps, "threads": torch.get_num_threads()}
    for lr in LEARNING_RATES:
        config = load_profile("cpu-fourrooms", [f"train.lr={lr}"])
        start = time.perf_counter()
        records = fit_q_star(config, steps, eval_every=every,
                             train_states=1_000 if quick else 50_000,
                             episodes=8 if quick else config.train.val_episodes)
        result[f"lr={lr:g}"] = {
            "seconds": round(time.perf_counter() - start, 1),
            "plateau_exit_step": plateau_exit(records),
            "greedy_success": records[-1]["greedy_success"],
            "curve": [(r["step"], round(r["mse"], 4), round(r["greedy_optimal"], 3)) for r in records],
            "constant_output_mse": round(records[0]["constant_output_mse"], 4),
        }
    return result
