"""The evaluation and training figures: reference lines, intervals and labels."""
import json

import numpy as np

from hrm_agent.envs.stats import POLICY_LABELS
from hrm_agent.evaluate import NO_SUCCESS, Episodes, bootstrap_mean_ci
from hrm_agent.plots import plot_evaluation, plot_training_curves


def episodes(p, n=40, seed=0):
    rng = np.random.default_rng(seed)
    success = rng.random(n) < p
    optimal = rng.integers(3, 15, n)
    length = np.where(success, optimal + rng.integers(0, 6, n), 80)
    return Episodes(success, length, np.where(success, 1.0, -0.8), optimal)


def test_evaluation_figure_labels_failures_and_shows_references_with_bands(tmp_path):
    results = {"hrm | eval Carry Z": episodes(0.0), "cnn": episodes(0.9),
               POLICY_LABELS["random"]: episodes(0.25, seed=1), POLICY_LABELS["oracle"]: episodes(1.0)}
    fig = plot_evaluation(results, "test", tmp_path / "eval.png")
    assert (tmp_path / "eval.png").stat().st_size < 150_000
    success, length, ratio = fig.axes
    assert [t.get_text() for t in success.get_xticklabels()] == ["hrm | eval Carry Z", "cnn"]
    assert success.get_ylim()[0] == 0 and 1 <= success.get_ylim()[1] <= 1.05
    assert [t.get_text().strip() for t in ratio.texts] == [NO_SUCCESS]  # not an empty bar
    whiskers, bars = ratio.containers
    caps = np.concatenate([cap.get_ydata() for cap in whiskers.lines[1]])
    assert np.nanmin(caps) > 0  # the whiskers of a ratio stay above 0
    assert bars.patches[1].get_height() == results["cnn"].optimality_ratios().mean()
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "random policy (band: 95% CI)", "BFS oracle (band: 95% CI)"]
    bands = [p for ax in fig.axes for p in ax.patches if p.get_alpha() == 0.12]
    assert len(bands) == 3 * 2  # a band per reference and panel, each in the legend
    assert np.isclose(bands[-1].get_y(), bootstrap_mean_ci(results["BFS oracle"].optimality_ratios())[0])


def test_training_curves_show_labelled_reference_lines(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"carry_z": True}}))
    (run / "metrics.jsonl").write_text("\n".join(
        json.dumps({"kind": "val", "step": s, "success_rate": s / 10, "mean_episode_length": 80 - s})
        for s in (1, 2, 3)))
    references = {POLICY_LABELS["random"]: {"success_rate": 0.22, "mean_episode_length": 70.0},
                  POLICY_LABELS["oracle"]: {"success_rate": 1.0, "mean_episode_length": 12.0}}
    fig = plot_training_curves({"carry": run}, "success_rate", "fourrooms", references=references)
    (ax,) = fig.axes
    assert ax.get_ylim() == (0, 1)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["carry", "random policy: 0.22", "BFS oracle: 1.00"]
    fig = plot_training_curves({"carry": run}, "mean_episode_length", "fourrooms", references=references)
    assert "BFS oracle: 12.00" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_read_metrics_drops_a_torn_last_line(tmp_path):
    """A run killed mid-write (or one still writing) plots up to its last whole record."""
    from hrm_agent.plots import read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"kind": "val", "step": 8, "success_rate": 0.5}\n'
                                            '{"kind": "val", "step": 16, "succ')
    assert read_metrics(tmp_path) == [{"kind": "val", "step": 8, "success_rate": 0.5}]
