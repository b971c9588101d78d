"""The convergence / divergence analysis (paper-notes §4.4): change flags, sample exclusions,
distances, medians and bootstrap intervals, the rollout recorder and its interventions."""
import numpy as np
import pytest
import torch

from hrm_agent import analysis
from hrm_agent.analysis import (Rollouts, bootstrap_median_ci, classify_changes, convergence_mse,
                                divergence_mse, median_curves, move_goal, record_rollouts,
                                sample_mask)
from hrm_agent.checkpoint import save_checkpoint
from hrm_agent.envs.grid import FLOOR, GOAL, parse_map
from hrm_agent.evaluate import run_episodes
from hrm_agent.models import build_model
from tests.conftest import tiny_config


def changed(before: str, after: str) -> bool:
    prev, cur = parse_map(before), parse_map(after)
    return bool(classify_changes(prev[None], cur[None], tuple(prev.shape))[0])


OPEN = """
@...>
.....
.....
"""


def test_agent_move_alone_is_static():
    assert not changed("@...>\n.....", "<@..>\n.....")
    assert not changed(OPEN, OPEN)


def test_door_on_the_path_is_a_change_and_elsewhere_is_not():
    # BFS path: along the top row (ties go to E before S)
    assert changed(OPEN, "@.#.>\n.....\n.....")
    assert not changed(OPEN, "@...>\n.....\n..#..")  # differs, but off the path: static
    # goal below: several shortest paths; ours goes E first, so a door down the first column
    # lies on another shortest path only and does not count
    assert changed("@....\n.....\n....>", "@#...\n.....\n....>")
    assert not changed("@....\n.....\n....>", "@....\n#....\n....>")


def test_door_closing_the_only_gap_is_a_change():
    before = "@.|.>\n.....\n..|.."
    assert changed(before, "@.|.>\n..#..\n..|..")


def test_cut_off_goal_changes_only_when_a_path_reopens():
    blocked = "@.|.>\n..#..\n..|.."
    assert changed(blocked, blocked.replace("#", "."))  # reopened
    assert not changed(blocked, "@.|.>\n..#..\n#.|..")  # another change, still cut off


def make_rollouts(reward, valid):
    t, b = np.asarray(reward).shape
    z = np.zeros((t, b, 3, 2), np.float16)
    return Rollouts(np.zeros((t + 1, b, 4), np.uint8), np.zeros((t, b), np.int64),
                    np.asarray(reward, np.float32), np.asarray(valid, bool), np.zeros(b, bool),
                    z, z, (2, 2), True)


def test_sample_mask_drops_step_zero_after_success_and_after_done():
    reward = [[0.0, 0.0, 0.0], [1.0, 0.0, -0.01], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    valid = [[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 0, 1]]
    # env 0: frames repeated after its success stay flagged valid (the authors' collector)
    assert sample_mask(make_rollouts(reward, valid)).tolist() == [
        [False, False, False], [True, True, True], [False, True, True], [True, False, True]]


def test_mse_and_median_match_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 9, 64)).astype(np.float32)
    direct = np.array([[((z[i, k] - z[i, 8]) ** 2).sum() / 64 for k in range(9)] for i in range(5)])
    np.testing.assert_allclose(convergence_mse(z), direct, rtol=1e-5)
    assert np.all(convergence_mse(z)[:, 8] == 0) and np.all(divergence_mse(z)[:, 1] == 0)
    np.testing.assert_allclose(divergence_mse(z)[:, 4], ((z[:, 4] - z[:, 1]) ** 2).mean(-1), rtol=1e-5)


def test_median_curves_pool_by_mode_and_condition():
    rng = np.random.default_rng(1)
    rollouts = []
    for carry in (True, False, True):
        r = make_rollouts(np.zeros((4, 3)), np.ones((4, 3)))
        r.carry_z = carry
        r.z_H = rng.normal(size=r.z_H.shape).astype(np.float16)
        r.z_L = rng.normal(size=r.z_L.shape).astype(np.float16)
        r.__dict__["changed"] = np.arange(12).reshape(4, 3) % 2 == 0  # set the cached flags
        rollouts.append(r)
    curves = {(c.state, c.mode, c.env_changed): c for c in median_curves(rollouts, n_boot=50)}
    assert len(curves) == 8
    carry = [rollouts[0], rollouts[2]]
    values = np.concatenate([convergence_mse(r.z_H[sample_mask(r) & r.changed]) for r in carry])
    c = curves["z_H", "Carry Z", True]
    assert c.n == len(values) == 2 * 4 and c.steps.tolist() == [1]
    np.testing.assert_allclose(c.median, np.median(values[:, 1:2], axis=0))
    assert c.label == "Carry Z - Env. changed (N=8)"
    assert curves["z_L", "Reset Z", False].n == 5
    rows = analysis.curves_table(list(curves.values()))
    assert len(rows) == 8
    assert set(rows[0]) == {"state", "mode", "env_changed", "step", "median", "lo", "hi", "n"}


def test_bootstrap_ci_contains_median_narrows_and_matches_resampling():
    rng = np.random.default_rng(2)
    small, large = rng.exponential(size=50), rng.exponential(size=5000)
    for values in (small, large):
        lo, hi = bootstrap_median_ci(values)
        assert lo <= np.median(values) <= hi
    assert np.ptp(bootstrap_median_ci(large)) < np.ptp(bootstrap_median_ci(small)) / 3
    assert bootstrap_median_ci(small) == bootstrap_median_ci(small)  # seeded
    for n in (11, 12):  # odd and even: same distribution of medians as brute-force resampling
        x = np.sort(rng.normal(size=n))
        brute = np.median(x[rng.integers(0, n, (200_000, n))], axis=1)
        for q in (0.025, 0.25, 0.5, 0.75, 0.975):
            lo, _ = bootstrap_median_ci(x, n_boot=200_000, alpha=2 * q)
            assert abs(lo - np.quantile(brute, q)) < 0.15 * np.std(x)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = tiny_config("model.segments=3")
    return build_model(cfg.model), cfg


def record(tiny, **kwargs):
    model, cfg = tiny
    return record_rollouts(model, cfg.env, **{"carry_z": True, "num_envs": 4, "seed": 3,
                                              "max_steps": 5, **kwargs})


@pytest.mark.parametrize("carry_z", [True, False])
def test_recorder_shapes_validity_and_trace_start(tiny, carry_z):
    model, cfg = tiny
    r = record(tiny, carry_z=carry_z)
    t, b = r.valid.shape
    assert b == 4 and 1 <= t <= 5 and r.obs.shape == (t + 1, 4, 121) and r.grid_shape == (11, 11)
    assert r.z_H.shape == r.z_L.shape == (t, 4, 4, 32) and r.z_H.dtype == np.float16
    assert r.valid[0].all() and np.all(r.valid[:-1] >= r.valid[1:])  # a prefix per env
    assert np.isnan(r.z_H[~r.valid]).all() and not np.isnan(r.z_H[r.valid]).any()
    assert np.all(r.reward[~r.valid] == 0)
    ended = r.valid.sum(0)
    assert np.all(r.success == (r.reward[ended - 1, np.arange(4)] == 1.0))
    init = model.H_init.half().numpy()
    assert np.all(r.z_H[0, :, 0] == init)
    later = r.valid[1:]
    if carry_z:  # step 0 of s_t is where s_{t-1} ended
        np.testing.assert_array_equal(r.z_H[1:, :, 0][later], r.z_H[:-1, :, -1][later])
        np.testing.assert_array_equal(r.z_L[1:, :, 0][later], r.z_L[:-1, :, -1][later])
        assert not np.all(r.z_H[1:, :, 0][later] == init)
        paper = record(tiny, carry_z=carry_z, paper_trace0=True)
        assert np.all(paper.z_H[paper.valid][:, 0] == init)
        np.testing.assert_array_equal(paper.z_H[:, :, 1:], r.z_H[:, :, 1:])
    else:
        assert np.all(r.z_H[r.valid][:, 0] == init)
        assert np.all(r.z_L[r.valid][:, 0] == model.L_init.half().numpy())


def test_recorder_is_deterministic_and_acts_like_evaluation(tiny):
    model, cfg = tiny
    a, b = record(tiny), record(tiny)
    for field in ("obs", "actions", "reward", "valid", "success", "z_H", "z_L"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    env = cfg.env.make(4, seed=3, max_steps=5)
    episodes = run_episodes(model, env, carry_z=True, seed=3, record=True)
    np.testing.assert_array_equal(a.actions[a.valid], episodes.actions.numpy()[a.valid])
    np.testing.assert_array_equal(a.success, episodes.success)
    assert a.changed.shape == a.valid.shape and not a.changed[0].any()


def test_move_goal_moves_only_the_goal():
    obs = torch.tensor(np.frombuffer(b"@..>|....", np.uint8)).repeat(3, 1)
    moved = move_goal(obs, seed=0)
    assert torch.equal(moved, move_goal(obs, seed=0))
    assert torch.all((moved == GOAL).sum(1) == 1)
    diff = moved != obs
    assert torch.all(diff.sum(1) == 2) and torch.all(diff[:, 3])
    assert torch.all(obs[moved == GOAL] == FLOOR)


def test_interventions(tiny):
    model, cfg = tiny
    reset = record(tiny, intervention="reset_each_segment")
    z = reset.z_H[reset.valid]
    assert np.all(z[:, 0] == model.H_init.half().numpy())
    assert np.all(z[:, 1:] == z[:, 1:2])  # every segment starts from the init: all the same
    effects = analysis.intervention_effects(model, cfg.env, True, 3, 3, max_steps=3)
    assert set(effects) == {"none", "reset_each_segment", "move_goal"}
    assert all(0.0 <= v <= 1.0 for v in effects.values())
    baseline = record_rollouts(model, cfg.env, carry_z=True, num_envs=3, seed=3, max_steps=3)
    baseline.success[:] = [True, False, False]  # a rollout given is not recorded again
    given = analysis.intervention_effects(model, cfg.env, True, 3, 3, baseline=baseline, max_steps=3)
    assert given == {**effects, "none": 1 / 3}
    with pytest.raises(ValueError):
        record(tiny, intervention="nope")


def test_reset_each_segment_runs_one_segment_for_all(tiny):
    """Run once, stated for all: the same as every segment run from the init."""
    model, cfg = tiny
    inputs = torch.randint(0, 131, (5, cfg.model.seq_len), dtype=torch.uint8)
    out = analysis.forward_reset_each_segment(model, inputs)
    first = model.carry_from_seed(model.init_seed(5))
    with torch.no_grad():
        for k in range(1, cfg.model.segments + 1):
            carry, q = model.segment(first, inputs)
            assert torch.equal(out.trace[0][k], carry.z_H[:, -1].float())
            assert torch.equal(out.trace[1][k], carry.z_L[:, -1].float())
    assert torch.equal(out.q, q) and torch.equal(out.trace[0][0], first.z_H[:, -1].float())


def test_analyse_pools_checkpoints_and_plots(tiny, tmp_path):
    model, cfg = tiny
    paths = {}
    for name in ("carry", "reset"):
        paths[name] = save_checkpoint({"config": cfg.to_dict(), "model": model.state_dict()},
                                      tmp_path / f"{name}.pt")
    result = analysis.analyse(paths, "fourrooms", num_envs=3, seed=0, max_steps=4, n_boot=100,
                              interventions=True)
    assert set(result.solved) == {"Carry Z", "Reset Z"} and result.solved["Carry Z"][1] == 6
    assert list(result.interventions) == [f"{name} | eval {mode}" for name in paths
                                          for mode in ("Carry Z", "Reset Z")]
    for label, effects in result.interventions.items():  # on the analysed episodes (seed + i)
        i, carry_z = list(paths).index(label.split(" | ")[0]), label.endswith("Carry Z")
        assert effects == analysis.intervention_effects(model, cfg.env, carry_z, 3, i, max_steps=4)
    assert len(result.convergence) == len(result.divergence) == 8
    assert all(c.median[0] == 0 for c in result.divergence if c.n)  # step 1 vs step 1
    for metric in ("convergence", "divergence"):
        path = tmp_path / f"{metric}.png"
        fig = result.plot(metric, path)
        assert fig.get_suptitle() == analysis.TITLES[metric, "fourrooms"]
        assert [ax.get_title() for ax in fig.axes[:2]] == ["z_L", "z_H"]
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size < 200_000
    with pytest.raises(ValueError):
        analysis.analyse(paths, "maze", num_envs=3, seed=0, max_steps=4)
