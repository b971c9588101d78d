"""Pictures of token grids: ASCII text, RGB images, matplotlib panels and the env figures.

Colours are from the Okabe-Ito palette (distinguishable under the common colour-vision
deficiencies), and the markers also differ in shape: the agent is a disk, the goal a full
square, the start a small square.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hrm_agent.envs.grid import AGENT, DOOR, FLOOR, GOAL, START, WALL_H, WALL_V

FLOOR_RGB = (247, 247, 247)
GRID_LINE_RGB = (215, 215, 215)
COLOURS = {  # token -> RGB
    WALL_V: (60, 60, 60),
    WALL_H: (60, 60, 60),
    DOOR: (230, 159, 0),  # orange: a dynamic maze door
    AGENT: (0, 114, 178),  # blue
    GOAL: (0, 158, 115),  # bluish green
    START: (204, 121, 167),  # reddish purple
}
UNKNOWN_RGB = (255, 0, 255)
CELL_PX = 16
CHANGED_RGB = (213, 94, 0)  # vermillion: the outline of a cell a door redraw changed
LEGEND = {  # env name -> (label, token) of every look in its renders, for the figures and the widget
    "fourrooms": [("agent @", AGENT), ("goal >", GOAL), ("start <", START),
                  ("wall, closed doorway |", WALL_V)],  # the closed doorway is a wall token
    "maze": [("agent @", AGENT), ("goal >", GOAL), ("start <", START),
             ("wall, fixed wall |", WALL_V), ("closed dynamic door #", DOOR)],
}
_MARKERS = {AGENT: ("o", 9), GOAL: ("s", 9), START: ("s", 5), WALL_V: ("s", 11), DOOR: ("s", 11)}


def _grid(obs, shape=None) -> np.ndarray:
    """One env's observation as a (H, W) uint8 array; `shape` is (H, W) or an env."""
    array = obs.cpu().numpy() if isinstance(obs, torch.Tensor) else np.asarray(obs)
    if shape is not None:
        if hasattr(shape, "height"):
            shape = (shape.height, shape.width)
        array = array.reshape(shape)
    if array.ndim != 2:
        raise ValueError(f"expected one (H, W) grid or a flat observation with a shape, got {array.shape}")
    return array.astype(np.uint8)


def render_ascii(obs, shape=None) -> str:
    """The grid as lines of text, e.g. `render_ascii(obs[0], env)` for a flat observation."""
    return "\n".join("".join(map(chr, row)) for row in _grid(obs, shape))


def render_rgb(obs, shape=None, cell_px: int = CELL_PX) -> np.ndarray:
    """(H*cell_px, W*cell_px, 3) uint8 image of one grid (see the module docstring)."""
    grid = _grid(obs, shape)
    height, width = grid.shape
    y, x = np.mgrid[0:cell_px, 0:cell_px] + 0.5
    half = cell_px / 2
    shapes = {AGENT: (y - half) ** 2 + (x - half) ** 2 <= (0.38 * cell_px) ** 2,
              GOAL: np.maximum(abs(y - half), abs(x - half)) <= 0.42 * cell_px,
              START: np.maximum(abs(y - half), abs(x - half)) <= 0.25 * cell_px}
    floor = np.empty((cell_px, cell_px, 3), np.uint8)
    floor[:] = GRID_LINE_RGB
    floor[1:, 1:] = FLOOR_RGB
    tiles = [floor, np.full_like(floor, UNKNOWN_RGB)]  # one tile per token: 0 floor, 1 unknown
    tile_of = np.ones(256, np.intp)
    tile_of[FLOOR] = 0
    for token, rgb in COLOURS.items():
        tile = floor.copy()
        tile[shapes.get(token, np.s_[:])] = rgb
        tile_of[token] = len(tiles)
        tiles.append(tile)
    cells = np.stack(tiles)[tile_of[grid]]  # (H, W, cell_px, cell_px, 3)
    return cells.transpose(0, 2, 1, 3, 4).reshape(height * cell_px, width * cell_px, 3)


def plot_grid(ax, obs, shape=None, title: str | None = None) -> None:
    """Draw one grid on a matplotlib axes (for notebooks and figures)."""
    ax.imshow(render_rgb(obs, shape), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def legend_handles(env_name: str) -> tuple[list, list[str]]:
    """Matplotlib legend handles and labels for the looks in `env_name`'s renders."""
    from matplotlib.lines import Line2D

    if env_name not in LEGEND:
        raise ValueError(f"unknown env {env_name!r}; choose one of {', '.join(LEGEND)}")
    handles = [Line2D([], [], linestyle="none", marker=_MARKERS[token][0],
                      markersize=_MARKERS[token][1], markeredgewidth=0,
                      markerfacecolor=np.divide(COLOURS[token], 255))
               for _, token in LEGEND[env_name]]
    return handles, [label for label, _ in LEGEND[env_name]]


def _door_change_strip(env, frames: int, max_steps: int = 100_000) -> list[tuple[int, np.ndarray]]:
    """`frames` consecutive observations (step, grid) of one oracle episode of `env` (B=1)
    whose last frame is the first to show a door redraw."""
    from hrm_agent.envs.oracle import oracle_actions

    episode = [(0, _grid(env.reset()[0], env))]
    for _ in range(max_steps):
        obs, _, terminated, truncated, info = env.step(oracle_actions(env))
        episode.append((len(episode), _grid(info["final_obs"][0], env)))
        # frames from step 1 on: the reset frame shows no doors (the authors' quirk)
        if bool(info["doors_changed"][0]) and len(episode) > frames:
            return episode[-frames:]
        if bool(terminated[0] | truncated[0]):
            episode = [(0, _grid(obs[0], env))]
    raise RuntimeError("no door change seen; is p_change 0?")


def save_env_figures(out_dir, seed: int = 0, frames: int = 4) -> list[Path]:
    """Write `env_<name>.png` for both envs into `out_dir`: `frames` consecutive steps of an
    oracle agent, the last one just after a door redraw (changed cells outlined), and a
    legend of the colours."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    from hrm_agent.envs import ENVS

    changed_colour = np.divide(CHANGED_RGB, 255)
    titles = {"fourrooms": "Four-rooms: one of the four doorways is closed (`|`)",
              "maze": "Maze: fixed walls `|` and five dynamic doors `#` (orange)"}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, env_class in ENVS.items():
        env = env_class(1, seed=seed)
        strip = _door_change_strip(env, frames)
        fig = Figure(figsize=(2.3 * frames, 2.3 * env.height / env.width + 0.9), layout="constrained")
        axes = fig.subplots(1, frames)
        for i, (ax, (t, grid)) in enumerate(zip(axes, strip)):
            redrawn = i == frames - 1
            plot_grid(ax, grid, title=f"t = {t}" + ("  (doors redrawn)" if redrawn else ""))
            if redrawn:
                before = strip[i - 1][1]
                changed = (grid != before) & (grid != AGENT) & (before != AGENT)
                for r, c in zip(*np.nonzero(changed)):
                    ax.add_patch(Rectangle((c * CELL_PX - 0.5, r * CELL_PX - 0.5), CELL_PX, CELL_PX,
                                           fill=False, edgecolor=changed_colour, linewidth=2))
        handles, labels = legend_handles(name)
        handles.append(Patch(fill=False, edgecolor=changed_colour, linewidth=2))
        labels.append("changed by the redraw")
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8,
                   frameon=False)
        fig.suptitle(titles[name], fontsize=10)
        path = out_dir / f"env_{name}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        paths.append(path)
    return paths
