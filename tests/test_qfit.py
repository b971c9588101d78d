"""The Q* regression probe: labels, reproducibility, and the plateau read-out of its bench."""
from __future__ import annotations

import pytest
import torch

from hrm_agent.bench.fit import PROFILE, VARIANTS, plateau_exit, run
from hrm_agent.cli import main
from hrm_agent.envs import START, FourRooms, is_obstacle
from hrm_agent.experiment import load_profile
from hrm_agent.qfit import fit_q_star, greedy_optimal_rate, labelled_states

OVERRIDES = ["model.hidden_size=32", "model.segments=2", "train.batch_size=8"]


def test_labelled_states_show_the_door_and_have_bounded_values():
    config = load_profile("cpu-fourrooms", OVERRIDES)
    obs, q_star = labelled_states(config, 64, seed=0)
    assert obs.shape == (64, 121) and q_star.shape == (64, 4)
    # states from inside episodes too: some show the start `<` the agent has left
    assert 0 < (obs == START).any(1).sum() < 64
    assert q_star.max() <= 1.0 and q_star.min() >= -0.01
    # the closed door is in the observation: one obstacle cell more than the bare map
    assert (is_obstacle(obs).sum(1) == is_obstacle(FourRooms.map).sum() + 1).all()


def test_greedy_optimal_rate_counts_ties_as_optimal():
    q_star = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.5, 0.9, 0.0]])
    assert greedy_optimal_rate(torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]), q_star) == 1.0
    assert greedy_optimal_rate(torch.tensor([[0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 1.0, 0.0]]), q_star) == 0.5


def test_fit_is_reproducible_and_reports_every_interval():
    config = load_profile("cpu-fourrooms", OVERRIDES)
    kwargs = dict(train_states=64, eval_states=32, eval_every=2, seed=1)
    first = fit_q_star(config, 5, **kwargs)
    assert [r["step"] for r in first] == [0, 2, 4, 5]
    assert first == fit_q_star(config, 5, **kwargs)
    assert first[0]["mse"] != first[-1]["mse"]  # the optimizer steps change the network
    assert all(0.0 <= r["greedy_optimal"] <= 1.0 for r in first)
    assert "greedy_success" not in first[-1]


def test_fit_plays_the_fitted_network_on_real_episodes():
    config = load_profile("cpu-fourrooms", OVERRIDES)
    records = fit_q_star(config, 2, train_states=64, eval_states=32, eval_every=2, episodes=16)
    success = records[-1]["greedy_success"]
    assert success * 16 == round(success * 16) and 0.0 <= success <= 1.0  # a rate over 16 episodes
    assert all("greedy_success" not in r for r in records[:-1])


def test_plateau_exit_is_the_first_step_below_the_threshold():
    records = [{"step": s, "mse": m, "constant_output_mse": 0.04}
               for s, m in [(0, 0.5), (100, 0.039), (200, 0.029), (300, 0.01)]]
    assert plateau_exit(records) == 200
    assert plateau_exit(records[:2]) is None


def test_fit_runs_any_kind_of_network():
    config = load_profile("cpu-cnn-fourrooms", ["train.batch_size=8"])
    records = fit_q_star(config, 3, train_states=64, eval_states=32, eval_every=3)
    assert [r["step"] for r in records] == [0, 3] and records[0]["mse"] != records[1]["mse"]


def test_bench_fit_variants_are_the_ablation_options_and_bad_names_are_refused(capsys):
    models = {name: load_profile(PROFILE, overrides).model for name, overrides in VARIANTS.items()}
    assert (models["lr=0.001"].pos_encoding, models["lr=0.001"].readout) == ("rope", "last")
    assert (models["rope2d+mean"].pos_encoding, models["rope2d+mean"].readout) == ("rope2d", "mean")
    with pytest.raises(ValueError, match=r"unknown bench fit variant\(s\) \['rop2d'\]"):
        run(quick=True, variants=["rop2d"])
    with pytest.raises(SystemExit):
        main(["bench", "model", "--variants", "mean"])
    assert "--variants is an option of `bench fit` only" in capsys.readouterr().err
