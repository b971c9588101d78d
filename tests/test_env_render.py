"""Pictures of the environments: text, RGB images and the figure files."""
from __future__ import annotations

import matplotlib.image
import numpy as np
import torch

from hrm_agent.envs import AGENT, DOOR, FLOOR, GOAL, START, WALL_H, WALL_V, FourRooms, Maze
from hrm_agent.envs.render import render_ascii, render_rgb, save_env_figures


def test_render_ascii_lines():
    env = Maze(2, seed=0)
    obs = env.reset()
    lines = render_ascii(obs[1], env).splitlines()
    assert len(lines) == 11 and {len(line) for line in lines} == {13}
    assert lines[0] == "-" * 13 and "@" in "".join(lines)
    assert render_ascii(obs[1].view(11, 13)) == render_ascii(obs[1], (11, 11 + 2))


def test_render_rgb_gives_every_token_its_own_look():
    tokens = [FLOOR, WALL_V, DOOR, AGENT, GOAL, START]
    grid = torch.tensor([tokens], dtype=torch.uint8)
    image = render_rgb(grid, cell_px=8)
    assert image.shape == (8, 48, 3) and image.dtype == np.uint8
    cells = [image[:, 8 * i: 8 * (i + 1)].reshape(-1, 3) for i in range(len(tokens))]
    assert len({cell.tobytes() for cell in cells}) == len(tokens)
    same = render_rgb(torch.tensor([[WALL_V, WALL_H]], dtype=torch.uint8), cell_px=8)
    assert (same[:, :8] == same[:, 8:]).all()  # both walls look alike, as in the observation


def test_save_env_figures(tmp_path):
    paths = save_env_figures(tmp_path / "figs", seed=0)
    assert [p.name for p in paths] == ["env_fourrooms.png", "env_maze.png"]
    for path in paths:
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[1] > 2 * image.shape[0]  # a strip of frames


def test_door_change_strip_ends_with_a_change():
    from hrm_agent.envs.render import _door_change_strip

    strip = _door_change_strip(FourRooms(1, seed=3), frames=3)
    (t0, a), (t1, b), (t2, c) = strip
    assert t1 == t0 + 1 and t2 == t1 + 1 and t0 >= 1
    closed = [{tuple(x) for x in np.argwhere(g == WALL_V)} for g in (a, b, c)]
    assert closed[0] == closed[1] != closed[2]


def test_legend_explains_every_look_in_the_renders():
    from hrm_agent.envs.render import LEGEND, legend_handles

    for env in (FourRooms(8, seed=0), Maze(8, seed=0)):
        seen = set(env.reset().unique().tolist())
        for _ in range(20):
            seen |= set(env.step(torch.randint(4, (8,)))[0].unique().tolist())
        explained = {token for _, token in LEGEND[env.name]} | {FLOOR, WALL_H}  # `-` looks as `|`
        assert seen <= explained and {AGENT, GOAL, START, WALL_V} <= seen
        handles, labels = legend_handles(env.name)
        assert len(handles) == len(labels) == len(LEGEND[env.name])
    assert ("closed dynamic door #", DOOR) in LEGEND["maze"]
