"""`envstats`: episode statistics of the random and oracle policies."""
from __future__ import annotations

import pytest

from hrm_agent.envs.stats import envstats


def test_oracle_and_random_in_fourrooms():
    oracle = envstats("fourrooms", "oracle", episodes=100, seed=0, num_envs=32)
    random = envstats("fourrooms", "random", episodes=100, seed=0, num_envs=32)
    assert oracle["success_rate"] == 1.0 and oracle["unreachable_fraction"] == 0.0
    assert oracle["mean_episode_length"] < 20 < random["mean_episode_length"] <= 80
    assert random["success_rate"] < 0.6
    assert 0.0 < oracle["change_rate_per_step"] < 0.1
    for stats in (oracle, random):
        assert stats["episodes"] == 100 and stats["env"] == "fourrooms" and stats["seed"] == 0
    assert envstats("fourrooms", "random", episodes=100, seed=0, num_envs=32) == random


def test_maze_statistics_with_doors_drawn_at_reset():
    stats = envstats("maze", "oracle", episodes=64, seed=1, num_envs=16, draw_doors_at_reset=True)
    assert stats["success_rate"] > 0.9
    assert 0.0 < stats["unreachable_fraction"] < 0.3
    assert 2 < stats["mean_oracle_path_length"] < 20


def test_bad_policy_raises():
    with pytest.raises(ValueError, match="random, oracle"):
        envstats("maze", "greedy", episodes=10, seed=0)
