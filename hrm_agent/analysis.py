"""Does the agent plan in its latent state? The convergence / divergence analysis of the paper
(paper-notes §4.4, Figures 5-7) and two interventions beyond it.

The paper asks whether z, refined over the 8 segments ("recurrent steps") of one env step,
starts closer to its final value when it was carried from the previous env step (Carry Z) than
when it starts from H_init / L_init (Reset Z), and whether that depends on the environment
having changed in a way that matters for the plan. Pipeline:

1. `record_rollouts`: one greedy episode per env, keeping the last-token z_H, z_L after every
   segment of every env step (`Rollouts`).
2. `classify_changes` / `Rollouts.changed`: the "Env. changed" flag of each env step, and
   `sample_mask`: the samples the paper keeps.
3. `convergence_mse` / `divergence_mse`: per-sample distance to the final state / to the state
   after the first segment; `median_curves`: medians with bootstrap CIs per condition, pooled
   over rollouts per eval mode; `solved_fraction`.
4. `plot_convergence`: the paper's two-panel figure.
5. Interventions (the authors' notebook, not the paper): `"reset_each_segment"` starts every
   segment from the init, `"move_goal"` shows the goal `>` somewhere else in the model's input.
6. `analyse`: all of it for a set of checkpoints, as the paper pools them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from hrm_agent.envs import AGENT, FLOOR, GOAL, START, grid_path_lengths, grid_shortest_path, make_env
from hrm_agent.evaluate import MODES
from hrm_agent.models import QNetwork, QOutput, Seed

Intervention = Literal["reset_each_segment", "move_goal"] | None
STATES = ("z_L", "z_H")  # panel order of the figures: z_L left, z_H right
TITLES = {
    ("convergence", "fourrooms"): "Convergence of recurrent state z to final values - 4-rooms environment",
    ("convergence", "maze"): "Convergence of recurrent state z to final values: Maze environment",
    ("divergence", "fourrooms"): "Divergence of recurrent state z from initial values: 4-rooms environment",
    ("divergence", "maze"): "Divergence of recurrent state z from initial values: Maze environment",
}
EPS = float(np.finfo(np.float32).eps)  # floor of the figures' log axis


# -- 1. recording ---------------------------------------------------------------------------

@dataclass
class Rollouts:
    """One greedy episode per env: T env steps (the longest episode), B envs, K = segments + 1
    recurrent steps, D = hidden size. Step t of env b is a real step iff `valid[t, b]`;
    elsewhere actions and rewards are 0 and z is NaN."""

    obs: np.ndarray  # (T+1, B, S) uint8: s_t, the true observation (the last frame is final)
    actions: np.ndarray  # (T, B) int64
    reward: np.ndarray  # (T, B) float32
    valid: np.ndarray  # (T, B) bool: the env was still running at step t
    success: np.ndarray  # (B,) bool: the episode reached the goal (final reward == 1)
    z_H: np.ndarray  # (T, B, K, D) float16: last-token z_H at recurrent steps 0..K-1
    z_L: np.ndarray  # (T, B, K, D) float16
    grid_shape: tuple[int, int]
    carry_z: bool
    intervention: Intervention = None

    @property
    def mode(self) -> str:
        return MODES[self.carry_z]

    @cached_property
    def changed(self) -> np.ndarray:
        """(T, B) bool: the "Env. changed" flag of the samples `sample_mask` keeps (False
        elsewhere), computed once."""
        changed = np.zeros(self.valid.shape, dtype=bool)
        keep = sample_mask(self)
        t, b = np.nonzero(keep)
        changed[t, b] = classify_changes(self.obs[t - 1, b], self.obs[t, b], self.grid_shape)
        return changed


def make_analysis_env(env, num_envs: int, *, seed: int, p_change: float = 0.05, max_steps: int = 80,
                      device="cpu"):
    """The batched env for a rollout: `env` is an env name, an `EnvConfig` (the checkpoint's, so
    its door settings carry over) or an env already built with these settings."""
    if isinstance(env, str):
        return make_env(env, num_envs, device=device, seed=seed, p_change=p_change, max_steps=max_steps)
    if hasattr(env, "make"):
        return env.make(num_envs, device=device, seed=seed, p_change=p_change, max_steps=max_steps)
    built = (env.num_envs, env.p_change, env.max_steps)
    if built != (num_envs, p_change, max_steps):
        raise ValueError(f"the env has (num_envs, p_change, max_steps) = {built}, "
                         f"asked for {(num_envs, p_change, max_steps)}")
    return env


def move_goal(obs: Tensor, seed: int) -> Tensor:
    """The observations (B, S) with the goal `>` moved to a random floor cell `.` (the old goal
    cell becomes floor). The cell is the floor cell with the highest of B×S uniform keys drawn
    from `seed`, so with the same seed it stays put while it is floor, and moves only when the
    agent or a door covers it. Only the model's input changes, never the env."""
    keys = torch.rand(obs.shape, generator=torch.Generator().manual_seed(seed)).to(obs.device)
    cell = keys.masked_fill(obs != FLOOR, -1.0).argmax(1, keepdim=True)
    moved = obs.masked_fill(obs == GOAL, FLOOR)
    return moved.scatter(1, cell, GOAL)


def forward_reset_each_segment(model: QNetwork, inputs: Tensor) -> QOutput:
    """`model(inputs, init, trace=True)` but with z reset to H_init / L_init before every
    segment: the policy without recurrence. Every segment then sees the same state and input,
    so all K-1 traced states and Q are those of a single segment, which is run once."""
    first = model.carry_from_seed(model.init_seed(inputs.shape[0]))
    carry, q = model.segment(first, inputs)
    last = (carry.z_H[:, -1], carry.z_L[:, -1])
    trace = [(first.z_H[:, -1], first.z_L[:, -1])] + [last] * model.config.segments
    return QOutput(q, model.seed_from_carry(carry),
                   tuple(torch.stack([s[i] for s in trace]).float() for i in range(2)))


@torch.no_grad()
def record_rollouts(model: QNetwork, env, *, carry_z: bool, num_envs: int, seed: int,
                    p_change: float = 0.05, max_steps: int = 80, device="cpu",
                    intervention: Intervention = None, paper_trace0: bool = False) -> Rollouts:
    """One greedy episode in each of `num_envs` envs (`env`: see `make_analysis_env`; the model
    must be on `device`), recording observations, actions, rewards and the z trace.

    Recurrent step 0 is the state the model really started from: under Carry Z the previous env
    step's final state. The authors logged H_init / L_init there even under Carry Z;
    `paper_trace0=True` reproduces that quirk. The model runs only on the envs still running.
    """
    if intervention not in (None, "reset_each_segment", "move_goal"):
        raise ValueError(f"unknown intervention {intervention!r}")
    env = make_analysis_env(env, num_envs, seed=seed, p_change=p_change, max_steps=max_steps,
                            device=device)
    was_training = model.training
    model.eval()
    obs = env.reset(seed=seed)
    init = model.init_seed(num_envs)
    carried = Seed(init.z_H.clone(), init.z_L.clone())
    start_state = [z[0, -1] for z in model.carry_from_seed(model.init_seed(1))]  # last token
    active = torch.ones(num_envs, dtype=torch.bool, device=obs.device)
    success = torch.zeros_like(active)
    frames, actions, rewards, valid, z_H, z_L = [obs], [], [], [], [], []
    while bool(active.any()):
        index = active.nonzero().squeeze(1)
        inputs = obs[index]
        if intervention == "move_goal":
            inputs = move_goal(obs, seed)[index]
        if intervention == "reset_each_segment":
            out = forward_reset_each_segment(model, inputs)
        else:
            start = Seed(carried.z_H[index], carried.z_L[index]) if carry_z else model.init_seed(len(index))
            out = model(inputs, start, trace=True)
        carried.z_H[index] = out.seed.z_H.to(carried.z_H.dtype)
        carried.z_L[index] = out.seed.z_L.to(carried.z_L.dtype)
        action = torch.zeros(num_envs, dtype=torch.long, device=obs.device)
        action[index] = out.q.argmax(-1)
        traced = []
        for z, z_init in zip(out.trace, start_state):
            if paper_trace0:
                z[0] = z_init
            full = torch.full((num_envs, *z.shape[::2]), float("nan"), device=z.device)
            full[index] = z.transpose(0, 1)
            traced.append(full.half().cpu())
        obs, reward, terminated, truncated, info = env.step(action)
        frames.append(torch.where(active[:, None], info["final_obs"], frames[-1]))
        actions.append(action.masked_fill(~active, 0))
        rewards.append(reward.masked_fill(~active, 0.0))
        valid.append(active.clone())
        z_H.append(traced[0])
        z_L.append(traced[1])
        success |= active & info["success"]
        active &= ~(terminated | truncated)
    model.train(was_training)
    frames, actions, rewards, valid, z_H, z_L = (torch.stack(xs).cpu().numpy() for xs in
                                                 (frames, actions, rewards, valid, z_H, z_L))
    return Rollouts(frames, actions, rewards, valid, success.cpu().numpy(), z_H, z_L,
                    (env.height, env.width), carry_z, intervention)


# -- 2. which samples, and did the environment change ----------------------------------------

def classify_changes(prev_obs, obs, grid_shape: tuple[int, int]) -> np.ndarray:
    """(N,) bool "Env. changed" flags for pairs of observations s_{t-1}, s_t ((N, S) or (N, H, W)).

    As the authors: with `@` and `<` masked to `.`, no differing cell means static. Otherwise,
    if s_{t-1} had an agent-to-goal path (obstacles `|`, `-`, `#`), changed = a differing cell
    lies on it (the agent's cell excluded); if it had none, changed = s_t has one. The authors
    use A*; we use the BFS shortest path of `grid_shortest_path`. Shortest paths are often not
    unique, and which one is taken decides whether a change "hits" it: ours is deterministic
    (ties to the lowest action N, E, S, W), the authors' is whatever their A* returned.
    """
    prev = torch.as_tensor(np.asarray(prev_obs)).reshape(-1, *grid_shape)
    cur = torch.as_tensor(np.asarray(obs)).reshape(-1, *grid_shape)
    if len(prev) == 0:
        return np.zeros(0, dtype=bool)
    diff = _without_markers(prev) != _without_markers(cur)
    on_path = grid_shortest_path(prev)
    changed = (diff & on_path & (prev != AGENT)).flatten(1).any(1)
    cut_off = ~on_path.flatten(1).any(1)
    if cut_off.any():
        changed[cut_off] = grid_path_lengths(cur[cut_off]) >= 0
    return (changed & diff.flatten(1).any(1)).numpy()


def _without_markers(grids: Tensor) -> Tensor:
    return torch.where((grids == AGENT) | (grids == START), FLOOR, grids)


def sample_mask(rollouts: Rollouts) -> np.ndarray:
    """(T, B) bool: the samples the paper keeps. Dropped: env step 0 of every episode (its
    observation lacks the doors, paper-notes §1.1), steps after the episode ended, and every
    step whose previous reward was 1 (frames repeated after success)."""
    mask = rollouts.valid.copy()
    mask[0] = False
    mask[1:] &= rollouts.reward[:-1] != 1.0
    return mask


# -- 3. distances and statistics --------------------------------------------------------------

def mse_to(z: np.ndarray, reference: int) -> np.ndarray:
    """(..., K) per-sample MSE Σ_d (z_k - z_reference)² / D of states z (..., K, D), in float32."""
    z = np.asarray(z, dtype=np.float32)
    return np.mean((z - z[..., reference, None, :]) ** 2, axis=-1)


def convergence_mse(z: np.ndarray) -> np.ndarray:
    """Distance of each recurrent step's state to the final one (Figs 5, 6)."""
    return mse_to(z, -1)


def divergence_mse(z: np.ndarray) -> np.ndarray:
    """Distance of each recurrent step's state to the one after the first segment (Fig 7)."""
    return mse_to(z, 1)


def bootstrap_median_ci(values, n_boot: int = 1000, seed: int = 0,
                        alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of the median of `values`.

    Draws the bootstrap medians exactly without materialising n_boot resamples: the k-th
    smallest of n uniform draws from the sorted values is the ceil(n·U)-th value, with
    U ~ Beta(k, n+1-k) the k-th order statistic of n U(0,1) (the (k+1)-th follows as
    U + (1-U)·Beta(1, n-k)). O(n log n + n_boot) however many samples there are."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = x.size
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    k = (n + 1) // 2
    u = rng.beta(k, n + 1 - k, n_boot)
    medians = x[_order_index(u, n)]
    if n % 2 == 0:
        medians = (medians + x[_order_index(u + (1 - u) * rng.beta(1, n - k, n_boot), n)]) / 2
    lo, hi = np.quantile(medians, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _order_index(u: np.ndarray, n: int) -> np.ndarray:
    """0-based index ceil(n·u) - 1 of the sorted value a uniform order statistic u picks."""
    return np.clip(np.ceil(n * u).astype(np.int64), 1, n) - 1


def solved_fraction(rollouts: Sequence[Rollouts]) -> tuple[float, int]:
    """(fraction of envs that reached the goal, number of envs), pooled over `rollouts`."""
    success = np.concatenate([r.success for r in rollouts])
    return float(success.mean()), int(success.size)


@dataclass
class Curve:
    """Median distance per recurrent step for one panel and condition, with its bootstrap CI."""

    state: str  # "z_L" or "z_H"
    mode: str  # "Carry Z" or "Reset Z"
    env_changed: bool
    steps: np.ndarray
    median: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: int  # samples per step

    @property
    def label(self) -> str:
        return f"{self.mode} - Env. {'changed' if self.env_changed else 'static'} (N={self.n})"


def median_curves(rollouts: Mapping[str, Sequence[Rollouts]] | Sequence[Rollouts],
                  distance: Callable[[np.ndarray], np.ndarray] = convergence_mse,
                  steps: Sequence[int] | None = None, n_boot: int = 1000, seed: int = 0,
                  alpha: float = 0.05) -> list[Curve]:
    """Median `distance` per recurrent step for every state × eval mode × change flag.

    Samples (env, env step) kept by `sample_mask` are pooled over all rollouts of an eval mode
    (the paper pools one checkpoint trained each way); `rollouts` may be grouped by mode or a
    flat list (grouped by `Rollouts.mode`). `steps` defaults to 1..K-2 (the paper's 1..7)."""
    if not isinstance(rollouts, Mapping):
        grouped: dict[str, list[Rollouts]] = {}
        for r in rollouts:
            grouped.setdefault(r.mode, []).append(r)
        rollouts = grouped
    curves = []
    for mode, group in rollouts.items():
        masks = [sample_mask(r) for r in group]
        changed = np.concatenate([r.changed[m] for r, m in zip(group, masks)])
        for state in STATES:
            d = np.concatenate([distance(getattr(r, state)[m]) for r, m in zip(group, masks)])
            steps_ = np.arange(1, d.shape[1] - 1) if steps is None else np.asarray(steps)
            for flag in (True, False):
                values = d[changed == flag][:, steps_]
                cis = [bootstrap_median_ci(v, n_boot, seed, alpha) for v in values.T]
                median = np.median(values, axis=0) if len(values) else np.full(len(steps_), np.nan)
                curves.append(Curve(state, mode, flag, steps_, median,
                                    np.array([c[0] for c in cis]), np.array([c[1] for c in cis]),
                                    len(values)))
    return curves


def curves_table(curves: Sequence[Curve]) -> list[dict]:
    """One row per curve and recurrent step (e.g. for `pandas.DataFrame`)."""
    return [{"state": c.state, "mode": c.mode, "env_changed": c.env_changed, "step": int(s),
             "median": float(m), "lo": float(lo), "hi": float(hi), "n": c.n}
            for c in curves for s, m, lo, hi in zip(c.steps, c.median, c.lo, c.hi)]


# -- 4. figures -----------------------------------------------------------------------------

def plot_convergence(curves: Sequence[Curve], title: str,
                     solved: Mapping[str, tuple[float, int]] | None = None, path=None):
    """The paper's convergence / divergence figure: z_L left, z_H right, median MSE per
    recurrent step on a log axis floored at float32 eps, bootstrap CI bands (in the legend),
    Carry Z solid, Reset Z dashed, and a side legend with the % of environments solved per
    eval mode (`solved`: mode -> (fraction, N), from `solved_fraction`). Saved to `path` when
    given."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe without a display
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig = Figure(figsize=(12, 5), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    colours = {True: "#D55E00", False: "#0072B2"}  # Okabe-Ito vermillion / blue
    for ax, state in zip(axes, STATES):
        for c in (c for c in curves if c.state == state):
            dashes = "-" if c.mode == MODES[True] else (0, (2, 2))
            style = dict(color=colours[c.env_changed], linestyle=dashes)
            ax.plot(c.steps, np.maximum(c.median, EPS), label=c.label, **style)
            ax.fill_between(c.steps, np.maximum(c.lo, EPS), np.maximum(c.hi, EPS),
                            color=style["color"], alpha=0.15, linewidth=0)
        ax.set_yscale("log")
        ax.set_ylim(bottom=EPS)
        ax.set_title(state)
        ax.set_xlabel("Recurrent step")
        ax.set_ylabel("Median MSE")
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(title)
    handles, labels = axes[1].get_legend_handles_labels()
    handles.append(Patch(color="grey", alpha=0.3, linewidth=0))
    labels.append("shaded: bootstrap 95% CI")
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    if solved:
        ns = "/".join(str(n) for n in sorted({n for _, n in solved.values()}))
        fig.legend([Line2D([], [], linestyle="none") for _ in solved],
                   [f"{mode}: {100 * frac:.1f}%" for mode, (frac, _) in solved.items()],
                   title=f"Environments solved (N={ns})", loc="outside right lower",
                   fontsize="small", handlelength=0)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    return fig


# -- 5. interventions -----------------------------------------------------------------------

INTERVENTIONS = ("reset_each_segment", "move_goal")


def intervention_effects(model: QNetwork, env, carry_z: bool, num_envs: int, seed: int,
                         baseline: Rollouts | None = None, **kwargs) -> dict[str, float]:
    """Success rate without intervention and under each intervention, on the same episodes
    (`kwargs` go to `record_rollouts`). `baseline`: the rollouts without intervention of these
    same arguments when they are already recorded (they are not recorded again)."""
    def record(intervention):
        return record_rollouts(model, env, carry_z=carry_z, num_envs=num_envs, seed=seed,
                               intervention=intervention, **kwargs)
    if baseline is None:
        baseline = record(None)
    return {"none": float(baseline.success.mean()),
            **{name: float(record(name).success.mean()) for name in INTERVENTIONS}}


# -- 6. everything for one environment --------------------------------------------------------

@dataclass
class Analysis:
    """Figures 5-7 data for one environment: curves per distance, solved fractions per mode,
    and (when asked) the interventions' success rates per "<checkpoint> | eval <mode>"."""

    env_name: str
    convergence: list[Curve]
    divergence: list[Curve]
    solved: dict[str, tuple[float, int]]
    interventions: dict[str, dict[str, float]]

    def plot(self, metric: Literal["convergence", "divergence"], path=None):
        return plot_convergence(getattr(self, metric), TITLES[metric, self.env_name], self.solved, path)


def analyse(checkpoints: Mapping[str, str | Path], env_name: str, num_envs: int = 1024, seed: int = 0,
            *, device="cpu", n_boot: int = 1000, interventions: bool = False,
            compile: bool = False, **kwargs) -> Analysis:
    """Record every checkpoint in both eval modes and pool the samples by eval mode, as the paper
    (one checkpoint trained with Carry Z and one with Reset Z per environment). Both modes of a
    checkpoint see the same episodes (seed + its index), different checkpoints different ones;
    `interventions` reruns those episodes under each intervention. Networks without recurrence
    (the baselines) have no latent state to analyse and are left out. `compile`: torch.compile
    the agents (`load_agent`). `kwargs` go to `record_rollouts` (p_change, max_steps,
    paper_trace0)."""
    from hrm_agent.trainer import load_agent

    agents = [(name, path, *load_agent(path, device, compile=compile))
              for name, path in checkpoints.items()]
    agents = [(name, path, model, config) for name, path, model, config in agents if model.recurrent]
    if not agents:
        raise ValueError(f"none of {list(checkpoints)} is a recurrent network; nothing to analyse")
    by_mode: dict[str, list[Rollouts]] = {mode: [] for mode in MODES.values()}
    effects: dict[str, dict[str, float]] = {}
    for i, (name, path, model, config) in enumerate(agents):
        if config.env.name != env_name:
            raise ValueError(f"checkpoint {path} was trained on {config.env.name!r}, not {env_name!r}")
        args = dict(num_envs=num_envs, seed=seed + i, device=device, **kwargs)
        for carry_z, mode in MODES.items():
            rollouts = record_rollouts(model, config.env, carry_z=carry_z, **args)
            by_mode[mode].append(rollouts)
            if interventions:
                effects[f"{name} | eval {mode}"] = intervention_effects(
                    model, config.env, carry_z, baseline=rollouts, **args)
    return Analysis(env_name,
                    median_curves(by_mode, convergence_mse, n_boot=n_boot, seed=seed),
                    median_curves(by_mode, divergence_mse, n_boot=n_boot, seed=seed),
                    {mode: solved_fraction(group) for mode, group in by_mode.items()}, effects)
