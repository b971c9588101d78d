"""Batched BFS and the oracle policy, against a plain Python BFS and the environments."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hrm_agent.envs import (AGENT, FLOOR, GOAL, WALL_H, WALL_V, FourRooms, Maze, distances,
                            grid_path_lengths, grid_shortest_path, optimal_q,
                            oracle_actions, shortest_path_lengths)
from hrm_agent.envs.oracle import descend

MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))


def python_bfs(obstacles: np.ndarray, source: tuple[int, int]) -> np.ndarray:
    height, width = obstacles.shape
    dist = np.full((height, width), -1)
    dist[source] = 0
    queue = deque([source])
    while queue:
        r, c = queue.popleft()
        for dr, dc in MOVES:
            nr, nc = r + dr, c + dc
            if 0 <= nr < height and 0 <= nc < width and not obstacles[nr, nc] and dist[nr, nc] < 0:
                dist[nr, nc] = dist[r, c] + 1
                queue.append((nr, nc))
    return dist


@st.composite
def obstacle_grids(draw, max_side=9):
    """A small batch of random obstacle grids, each with a free source and target cell."""
    height, width = draw(st.integers(1, max_side)), draw(st.integers(2, max_side))
    n = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31))
    density = draw(st.floats(0.0, 0.6))
    rng = np.random.default_rng(seed)
    obstacles = rng.random((n, height, width)) < density
    cells = np.stack([rng.choice(height * width, size=2, replace=False) for _ in range(n)])
    for i, (a, b) in enumerate(cells):
        obstacles[i].flat[[a, b]] = False
    return obstacles, cells[:, 0], cells[:, 1]


@settings(max_examples=60, deadline=None)
@given(obstacle_grids())
def test_distances_match_python_bfs(case):
    obstacles, sources, targets = case
    dist = distances(torch.from_numpy(obstacles), torch.from_numpy(sources)).numpy()
    lengths = shortest_path_lengths(torch.from_numpy(obstacles), torch.from_numpy(targets),
                                    torch.from_numpy(sources)).numpy()
    for i, source in enumerate(sources):
        expected = python_bfs(obstacles[i], np.unravel_index(source, obstacles[i].shape))
        np.testing.assert_array_equal(dist[i], expected)
        assert lengths[i] == expected.flat[targets[i]]


def token_grid(obstacles: np.ndarray, agent: int, goal: int) -> torch.Tensor:
    grid = np.where(obstacles, WALL_V, FLOOR).astype(np.uint8)
    grid.flat[goal], grid.flat[agent] = GOAL, AGENT
    return torch.from_numpy(grid)


@settings(max_examples=60, deadline=None)
@given(obstacle_grids())
def test_shortest_path_mask_is_one_valid_shortest_path(case):
    obstacles, agents, goals = case
    grids = torch.stack([token_grid(o, a, g) for o, a, g in zip(obstacles, agents, goals)])
    lengths = grid_path_lengths(grids)
    paths = grid_shortest_path(grids)
    assert torch.equal(paths, grid_shortest_path(grids))  # deterministic
    for i in range(len(grids)):
        expected = python_bfs(obstacles[i], np.unravel_index(goals[i], obstacles[i].shape)).flat[agents[i]]
        assert lengths[i] == expected
        cells = paths[i].numpy()
        if expected < 0:
            assert not cells.any()
            continue
        assert cells.sum() == expected + 1 and not (cells & obstacles[i]).any()
        assert cells.flat[agents[i]] and cells.flat[goals[i]]
        # the two ends have one path neighbour and every other path cell two: a simple chain
        padded = np.pad(cells, 1)
        neighbours = padded[:-2, 1:-1].astype(int) + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
        ends = {agents[i], goals[i]}
        for flat in np.flatnonzero(cells):
            assert neighbours.flat[flat] == (1 if flat in ends else 2)


def test_token_functions_see_the_goal_under_the_agent():
    grid = torch.full((1, 3, 4), FLOOR, dtype=torch.uint8)
    grid[0, 1, 2] = AGENT
    grid[0, 0, :] = WALL_H
    assert grid_path_lengths(grid).tolist() == [0]
    assert grid_shortest_path(grid)[0, 1, 2] and grid_shortest_path(grid).sum() == 1


def test_env_path_lengths_match_the_observation():
    for cls in (FourRooms, Maze):
        env = cls(128, seed=0, draw_doors_at_reset=True)
        obs = env.reset()
        for _ in range(5):
            from_obs = grid_path_lengths(obs.view(-1, env.height, env.width))
            assert torch.equal(env.shortest_path_lengths(), from_obs)
            obs, *_ = env.step(oracle_actions(env))


def first_episodes(env, steps):
    """Success of each env's first episode under the oracle policy."""
    env.reset()
    finished = torch.zeros(env.num_envs, dtype=torch.bool)
    success = torch.zeros_like(finished)
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(oracle_actions(env))
        success |= terminated & ~finished
        finished |= terminated | truncated
    assert finished.all()
    return success


def test_oracle_always_succeeds_in_fourrooms():
    # one closed doorway never disconnects the four rooms, so the goal is always reachable
    assert first_episodes(FourRooms(256, seed=1), 80).all()


def test_oracle_nearly_always_succeeds_in_the_maze():
    assert first_episodes(Maze(256, seed=1), 80).float().mean() > 0.95


def test_oracle_walks_towards_the_blocking_door_when_cut_off():
    env = Maze(512, seed=2)
    env.reset()
    cut_off = env.shortest_path_lengths() < 0
    assert cut_off.sum() > 5
    ignoring_doors = distances(env.obstacles(doors=False), env.goal).flatten(1)
    actions = oracle_actions(env)
    expected, _ = descend(ignoring_doors, env.agent, env.neighbours)
    assert torch.equal(actions[cut_off], expected[cut_off])
    step = env.neighbours[env.agent, actions]
    here = ignoring_doors.gather(1, env.agent[:, None])[:, 0]
    assert torch.equal(ignoring_doors.gather(1, step[:, None])[:, 0][cut_off], here[cut_off] - 1)


@pytest.mark.parametrize("cls", [FourRooms, Maze])
def test_optimal_q_satisfies_the_bellman_optimality_equation(cls):
    """Q*(s, a) = r + gamma max Q*(s', .) (r alone on reaching the goal), by stepping the env
    itself with doors held fixed; and the oracle's move is always one of the best."""
    gamma = 0.9
    env = cls(256, seed=3, p_change=0.0, max_steps=1000, draw_doors_at_reset=True)
    env.reset(seed=3)
    for _ in range(5):  # a few random moves, so the agent is not always on its start
        env.step(torch.randint(4, (256,), generator=torch.Generator().manual_seed(1)))
    q = optimal_q(env, gamma)
    start = env.state_dict()
    reachable = env.shortest_path_lengths() >= 0
    for action in range(4):
        env.load_state_dict(start)
        _, reward, terminated, truncated, _ = env.step(torch.full((256,), action))
        assert not truncated.any()
        bootstrap = torch.where(terminated, 0.0, gamma * optimal_q(env, gamma).max(dim=1).values)
        torch.testing.assert_close(q[reachable, action], (reward + bootstrap)[reachable])
    env.load_state_dict(start)
    best = q.max(dim=1).values
    chosen = q.gather(1, oracle_actions(env)[:, None]).squeeze(1)
    torch.testing.assert_close(chosen[reachable], best[reachable])
