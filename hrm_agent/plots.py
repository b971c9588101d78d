"""The workbook's figures of training and evaluation, styled as the paper's (paper-notes §4.2).

Every function returns a matplotlib `Figure` (no pyplot state, so it works headless and in
notebooks alike) and saves it when given a path.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from hrm_agent.envs.grid import ACTION_ARROWS
from hrm_agent.envs.render import plot_grid
from hrm_agent.envs.stats import POLICY_LABELS
from hrm_agent.evaluate import NO_SUCCESS, Episodes, interval_stats
from hrm_agent.trainer import CONFIG, read_records

# Okabe-Ito, the colour-blind-safe palette (the paper uses seaborn's "colorblind").
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
ENV_TITLES = {"fourrooms": "4-rooms environment", "maze": "Maze environment"}
CURVES = {  # metric -> (y label, legend location), as the paper's training figures
    "success_rate": ("Fraction of validation episodes reaching goal", "lower right"),
    "mean_episode_length": ("Mean episode length", "upper right"),
}


def read_metrics(run_dir: str | Path, kind: str = "val") -> list[dict]:
    """The records of one kind ('val' or 'train') in a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}: is it a training run directory?")
    return [r for r in read_records(path)[0] if r["kind"] == kind]


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def trained_with_carry_z(run_dir: str | Path) -> bool:
    """The condition of a run, from the config.json the trainer writes into it."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG} in {run_dir}: is it a training run directory?")
    return bool(json.loads(path.read_text())["train"]["carry_z"])


REFERENCE_STYLES = {  # reference policy label -> line style; the shaded band is its 95% CI
    POLICY_LABELS["random"]: dict(color="#555555", linestyle=(0, (5, 3))),
    POLICY_LABELS["oracle"]: dict(color="#000000", linestyle=(0, (1, 2))),
}


def plot_training_curves(runs: dict[str, str | Path], metric: str, env: str,
                         path: str | Path | None = None,
                         references: dict[str, dict] | None = None) -> Figure:
    """One series per run (legend label -> run directory), Carry Z solid and Reset Z dashed,
    against the number of training minibatches. `references` (label -> `envstats` result,
    e.g. `reference_stats(env, ...)`) adds the random policy and BFS oracle as labelled lines."""
    if metric not in CURVES:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(CURVES)}")
    y_label, legend_loc = CURVES[metric]
    fig = Figure(figsize=(8, 4.8))
    ax = fig.subplots()
    for i, (label, run_dir) in enumerate(runs.items()):
        records = read_metrics(run_dir)
        dashes = "-" if trained_with_carry_z(run_dir) else (0, (2, 2))
        ax.plot([r["step"] for r in records], [r[metric] for r in records], marker=".",
                color=PALETTE[i % len(PALETTE)], linestyle=dashes, clip_on=False, label=label)
    for label, stats in (references or {}).items():
        ax.axhline(stats[metric], linewidth=1.2, label=f"{label}: {stats[metric]:.2f}",
                   **REFERENCE_STYLES.get(label, {}))
    ax.set_xlabel("Number of training minibatches")
    ax.set_ylabel(y_label)
    ax.set_title(f"{y_label}: {ENV_TITLES[env]}")
    if metric == "success_rate":
        ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(title="Condition", loc=legend_loc)
    return _save(fig, path)


def plot_evaluation(results: dict[str, Episodes], title: str, path: str | Path | None = None,
                    references: tuple[str, ...] = tuple(POLICY_LABELS.values())) -> Figure:
    """Success rate, mean episode length and mean length / BFS optimum with 95% CIs (see
    `interval_stats`): a bar per agent/eval mode, and the results labelled in `references`
    (the reference policies of `compare_agents`) as lines across each panel, with shaded CIs."""
    agents = [label for label in results if label not in references]
    stats = {label: interval_stats(episodes) for label, episodes in results.items()}
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    axes = fig.subplots(1, 3)
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(agents))]
    x = np.arange(len(agents))
    panels = {"success": "Success rate", "length": "Mean episode length",
              "ratio": "Episode length / BFS optimum\n(successful episodes)"}
    legend = {}
    for ax, (key, name) in zip(axes, panels.items()):
        values = np.array([stats[label][key] for label in agents]).reshape(-1, 3)
        means = np.nan_to_num(values[:, 0])  # NaN: no successful episode, said on the bar
        errors = np.abs(values[:, 1:].T - values[:, 0])
        ax.bar(x, means, yerr=errors, color=colours, capsize=4)
        for i in np.flatnonzero(np.isnan(values[:, 0])):
            ax.annotate(NO_SUCCESS, (x[i], 0), xytext=(0, 4), textcoords="offset points", rotation=90,
                        ha="center", va="bottom", fontsize=8, zorder=4,
                        bbox=dict(facecolor="white", edgecolor="none", pad=1))
        for label in (label for label in references if label in results):
            estimate, lo, hi = stats[label][key]
            if np.isnan(estimate):
                continue
            style = REFERENCE_STYLES.get(label, {})
            line = ax.axhline(estimate, linewidth=1.2, zorder=3, **style)  # over the bars
            band = ax.axhspan(lo, hi, color=style.get("color"), alpha=0.12, linewidth=0, zorder=0.5)
            legend[label] = (band, line)
        ax.set_xticks(x, agents, rotation=25, ha="right", fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(0, 1.04)  # room for the oracle's line at 1
    axes[0].set_yticks(np.linspace(0, 1, 6))
    axes[2].set_ylim(bottom=0)
    if legend:
        fig.legend(list(legend.values()), [f"{label} (band: 95% CI)" for label in legend],
                   loc="outside lower center", ncol=len(legend), fontsize=9)
    fig.suptitle(f"{title} (bars: agents, whiskers: 95% CI)")
    return _save(fig, path)


def plot_episode(episodes: Episodes, env_index: int, shape, *,
                 max_frames: int = 8, title: str | None = None,
                 path: str | Path | None = None) -> Figure:
    """A strip of one recorded episode: each frame with the action the agent took and its Q.
    `shape` is (H, W) or an env of the same kind."""
    if episodes.frames is None:
        raise ValueError("the episodes were not recorded; use run_episodes(..., record=True)")
    length = int(episodes.length[env_index])
    steps = np.unique(np.linspace(0, length, min(max_frames, length + 1)).round().astype(int))
    fig = Figure(figsize=(2.1 * len(steps), 2.6))
    axes = np.atleast_1d(fig.subplots(1, len(steps)))
    for ax, t in zip(axes, steps):
        caption = f"t = {t}"
        if t < length:
            caption += f"  {ACTION_ARROWS[int(episodes.actions[t, env_index])]}"
            if episodes.q is not None:  # a reference policy has no Q
                caption += f"  max Q {float(episodes.q[t, env_index].max()):.2f}"
        plot_grid(ax, episodes.frames[t, env_index], shape, title=caption)
    outcome = "reached the goal" if episodes.success[env_index] else "failed"
    fig.suptitle(title or f"Episode {env_index}: {outcome} in {length} steps", fontsize=10)
    return _save(fig, path)
