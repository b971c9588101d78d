"""Greedy evaluation: reference policies on the agents' episodes, intervals, the comparison."""
from pathlib import Path

import numpy as np
import pytest

from hrm_agent.envs import make_env
from hrm_agent.envs.stats import POLICY_LABELS
from hrm_agent.evaluate import (NO_SUCCESS, Episodes, bootstrap_mean_ci, compare_agents,
                                find_agents, interval_stats, policy_episodes, summary_table)

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"


def episodes(success, length, optimal):
    success = np.asarray(success, bool)
    return Episodes(success, np.asarray(length), np.where(success, 1.0, -0.8), np.asarray(optimal))


def test_bootstrap_mean_ci_stays_in_the_ratio_range_and_covers_the_mean():
    ratios = np.array([1.0, 1.0, 1.0, 1.1, 1.2, 9.0, 14.0])  # skewed: a normal CI crosses 0
    lo, hi = bootstrap_mean_ci(ratios)
    assert ratios.min() <= lo < ratios.mean() < hi <= ratios.max()
    assert bootstrap_mean_ci(ratios) == (lo, hi)  # seeded
    assert np.isnan(bootstrap_mean_ci(ratios[:1])).all() and np.isnan(bootstrap_mean_ci(ratios[:0])).all()
    rng = np.random.default_rng(0)
    samples = rng.lognormal(0.3, 0.5, (200, 60))  # true mean exp(0.3 + 0.125)
    cover = np.mean([lo <= np.exp(0.425) <= hi for lo, hi in map(bootstrap_mean_ci, samples)])
    assert 0.88 <= cover <= 0.99


def test_interval_stats_and_table_say_when_no_episode_succeeded():
    failed = episodes([0, 0, 0], [80, 80, 80], [5, 6, 7])
    stats = interval_stats(failed)
    assert stats["success"][0] == 0.0 and stats["length"] == (80.0, 80.0, 80.0)
    assert np.isnan(stats["ratio"]).all()
    one = episodes([1, 0, 0], [10, 80, 80], [5, 6, 7])
    assert interval_stats(one)["ratio"][0] == 2.0 and np.isnan(interval_stats(one)["ratio"][1])
    table = summary_table({"hrm | eval Carry Z": failed, "lucky": one})
    assert NO_SUCCESS in table.splitlines()[1] and "2.00 (1 episode)" in table.splitlines()[2]


def test_reference_policies_play_the_same_episodes():
    oracle = policy_episodes("oracle", make_env("maze", 16, seed=5), seed=5, record=True)
    random = policy_episodes("random", make_env("maze", 16, seed=5), seed=5)
    again = policy_episodes("random", make_env("maze", 16, seed=5), seed=5)
    assert (oracle.optimal_length == random.optimal_length).all()  # the same start states
    assert (random.length == again.length).all()  # seeded
    assert oracle.success.mean() > random.success.mean()
    assert (oracle.optimality_ratios() > 0).all() and oracle.q is None
    assert oracle.frames.shape[:2] == (int(oracle.length.max()) + 1, 16)
    with pytest.raises(ValueError, match="unknown policy 'greedy'; choose one of random, oracle"):
        policy_episodes("greedy", make_env("maze", 1), seed=0)


def test_compare_agents_gives_a_recurrent_net_both_modes_and_others_one():
    shipped = find_agents(PRETRAINED, "fourrooms")
    agents = {name: shipped[name] for name in ("fourrooms-carry-z", "fourrooms-cnn")}
    results = compare_agents(agents, episodes=4, seed=0)
    assert list(results) == ["fourrooms-carry-z | eval Carry Z", "fourrooms-carry-z | eval Reset Z",
                             "fourrooms-cnn", *POLICY_LABELS.values()]
    optimal = [r.optimal_length for r in results.values()]
    assert all((o == optimal[0]).all() for o in optimal)  # one set of episodes
    with pytest.raises(ValueError, match="other env settings"):
        compare_agents({**find_agents(PRETRAINED, "fourrooms"), **find_agents(PRETRAINED, "maze")},
                       episodes=1, seed=0, policies=())
    with pytest.raises(ValueError, match="no checkpoints"):
        compare_agents({}, episodes=1, seed=0)
