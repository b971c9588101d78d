"""How fast the CPU profile's Q-network can fit the true Q* of four-rooms, per variant.

`python -m hrm_agent bench fit --json` regresses the cpu-fourrooms model onto Q* (see
`hrm_agent.qfit`) for each variant (by default the learning rates 3e-4, 1e-3, 3e-3) and reports
the curve, the step at which the MSE first falls below 75% of the constant-output plateau
(None: it never left the plateau), and the greedy success of the fitted network on the
validation episodes: a yardstick for what a DQN run of as many optimizer steps could reach.

`--variants lr=0.001,rope2d,mean,rope2d+mean` compares the paper's input/output choices with
the ablation options at the profile's lr 1e-3: 2-D RoPE (`model.pos_encoding`) and the mean
readout (`model.readout`). Measured (one seed, 1 thread, 3,000 steps; MSE / share of states
whose greedy action is optimal / greedy success on the 128 validation episodes):

    paper (1-D RoPE, last token)   0.0067 / 0.65 / 0.08
    rope2d                         0.0134 / 0.49 / 0.08   (0.0097 / 0.69 at step 2,500)
    mean                           0.0109 / 0.71 / 0.20
    rope2d + mean                  0.0021 / 0.75 / 0.22

The curves are noisy from one evaluation to the next (see `curve`); only the two together
clearly beat the paper's choice.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch

from hrm_agent.experiment import load_profile
from hrm_agent.qfit import fit_q_star

PROFILE = "cpu-fourrooms"
VARIANTS = {  # name -> overrides of the profile
    "lr=0.0003": ["train.lr=3e-4"],
    "lr=0.001": [],
    "lr=0.003": ["train.lr=3e-3"],
    "rope2d": ["model.pos_encoding='rope2d'"],
    "mean": ["model.readout='mean'"],
    "rope2d+mean": ["model.pos_encoding='rope2d'", "model.readout='mean'"],
}
DEFAULT_VARIANTS = ("lr=0.0003", "lr=0.001", "lr=0.003")


def plateau_exit(records: list[dict], fraction: float = 0.75) -> int | None:
    """First step whose MSE is below `fraction` of the constant-output MSE."""
    return next((r["step"] for r in records if r["mse"] < fraction * r["constant_output_mse"]), None)


def run(quick: bool = False, variants: Sequence[str] = DEFAULT_VARIANTS,
        steps: int | None = None) -> dict:
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown bench fit variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    default_steps, every = (20, 10) if quick else (3_000, 250)
    steps = steps or default_steps
    result: dict = {"profile": PROFILE, "steps": steps, "threads": torch.get_num_threads()}
    for name in variants:
        config = load_profile(PROFILE, VARIANTS[name])
        start = time.perf_counter()
        records = fit_q_star(config, steps, eval_every=min(every, steps),
                             train_states=1_000 if quick else 50_000,
                             episodes=8 if quick else config.train.val_episodes)
        result[name] = {
            "seconds": round(time.perf_counter() - start, 1),
            "plateau_exit_step": plateau_exit(records),
            "greedy_success": records[-1]["greedy_success"],
            "curve": [(r["step"], round(r["mse"], 4), round(r["greedy_optimal"], 3)) for r in records],
            "constant_output_mse": round(records[0]["constant_output_mse"], 4),
        }
    return result
