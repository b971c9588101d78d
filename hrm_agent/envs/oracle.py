"""Batched breadth-first search: shortest paths to the goal and the oracle policy built on them.

All functions take a batch of grids at once. One BFS from the goal gives the distance of every
cell to the goal, which answers both "how long is the shortest path" and "which move gets
closer" (paper-notes §4.4 uses A*; on a 4-connected unit-cost grid BFS finds the same lengths).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hrm_agent.envs.grid import (AGENT, GOAL, STEP_PENALTY, WIN_REWARD, is_obstacle,
                                 neighbour_table)


def distances(obstacles: Tensor, sources: Tensor, targets: Tensor | None = None) -> Tensor:
    """BFS distance in moves from `sources` to every cell; -1 where unreachable.

    obstacles: (N, H, W) bool; sources: (N,) flat cell indices. Moves off the grid are impossible.
    With `targets` (N,) the search stops once every target is reached, so cells farther away
    than the farthest target may be left at -1 (enough for path lengths, and much cheaper).
    """
    n, height, width = obstacles.shape
    free = ~obstacles
    reached = torch.zeros_like(free).view(n, height * width).scatter_(1, sources[:, None], True).view_as(free)
    dist = torch.where(reached, 0, -1)
    frontier = reached
    for k in range(1, height * width):
        padded = F.pad(frontier, (1, 1, 1, 1))
        frontier = (padded[:, :-2, 1:-1] | padded[:, 2:, 1:-1] | padded[:, 1:-1, :-2]
                    | padded[:, 1:-1, 2:]) & free & ~reached
        if not frontier.any():
            break
        reached |= frontier
        dist.masked_fill_(frontier, k)
        if targets is not None and reached.view(n, height * width).gather(1, targets[:, None]).all():
            break
    return dist


def shortest_path_lengths(obstacles: Tensor, agents: Tensor, goals: Tensor) -> Tensor:
    """(N,) long: moves from each agent cell to its goal cell, -1 when the goal is cut off."""
    dist = distances(obstacles, goals, targets=agents)
    return dist.flatten(1).gather(1, agents[:, None]).squeeze(1)


def descend(dist: Tensor, cells: Tensor, neighbours: Tensor) -> tuple[Tensor, Tensor]:
    """One step down a distance field: (action, next cell) per row of `dist` (N, H*W).

    Ties go to the lowest action index (N, E, S, W), so paths are deterministic. Where no move
    gets closer (on the goal, or cut off) the action is 0 and the cell stays put.
    """
    here = dist.gather(1, cells[:, None])
    candidates = neighbours[cells]
    closer = (dist.gather(1, candidates) == here - 1) & (here > 0)
    action = closer.int().argmax(1)
    step = candidates.gather(1, action[:, None]).squeeze(1)
    return action, torch.where(closer.any(1), step, cells)


def oracle_actions(env) -> Tensor:
    """(B,) long: the move that shortens the current path to the goal in every env of `env`.

    Where the goal is cut off by the current doors (possible in the maze, whose dynamic doors are
    drawn without a path check) the oracle follows the shortest path that ignores the dynamic
    doors, i.e. it walks up to the blocking door and bumps into it until a redraw opens the way.
    That path always exists: fixed walls are only placed when they keep one.
    """
    dist = distances(env.obstacles(), env.goal).flatten(1)
    cut_off = dist.gather(1, env.agent[:, None]).squeeze(1) < 0
    if cut_off.any():
        ignoring_doors = distances(env.obstacles(doors=False), env.goal).flatten(1)
        dist = torch.where(cut_off[:, None], ignoring_doors, dist)
    return descend(dist, env.agent, env.neighbours)[0]


def optimal_q(env, gamma: float) -> Tensor:
    """(B, A) float32: Q*(s, a) of every env's current state if its doors stayed as they are.

    The reward rules of the env (paper-notes §1.1): 1 for stepping onto the goal (terminal),
    STEP_PENALTY for a bump (the agent stays), 0 otherwise; V*(cell) = gamma^(d-1) at BFS
    distance d >= 1 from the goal. Envs whose goal is cut off get V* = 0 behind the doors.
    The doors do change (p_change), so this is the target of the static-door problem: what a
    value network should roughly represent, used to probe how fast it can (`hrm_agent.qfit`).
    """
    obstacles = env.obstacles()
    dist = distances(obstacles, env.goal).flatten(1).float()
    value = torch.where(dist > 0, gamma ** (dist - 1), 0.0)
    candidates = env.neighbours[env.agent]  # (B, A); off-grid moves already map to the agent
    bump = obstacles.flatten(1).gather(1, candidates) | (candidates == env.agent[:, None])
    here = value.gather(1, env.agent[:, None])
    q = torch.where(candidates == env.goal[:, None], WIN_REWARD, gamma * value.gather(1, candidates))
    return torch.where(bump, STEP_PENALTY + gamma * here, q)


# -- token grids alone (no env): what the analysis of recorded observations needs ------------

def grid_positions(grids: Tensor) -> tuple[Tensor, Tensor]:
    """Flat (agent, goal) cells of token grids (N, H, W); an agent standing on the goal hides
    the `>`, and then the goal is the agent's cell."""
    flat = grids.flatten(1)
    agent = (flat == AGENT).int().argmax(1)
    goal_seen = flat == GOAL
    goal = torch.where(goal_seen.any(1), goal_seen.int().argmax(1), agent)
    return agent, goal


def grid_path_lengths(grids: Tensor) -> Tensor:
    """(N,) long shortest agent-to-goal path lengths on token grids (N, H, W), -1 if cut off.

    Obstacles are `|`, `-` and `#`. Under the authors' first-observation quirk the reset grid
    shows no doors, so its length ignores them."""
    agent, goal = grid_positions(grids)
    return shortest_path_lengths(is_obstacle(grids), agent, goal)


def grid_shortest_path(grids: Tensor) -> Tensor:
    """(N, H, W) bool: the cells of one shortest agent-to-goal path, both ends included (all
    False where the goal is cut off). Deterministic: ties go to the lowest action index."""
    n, height, width = grids.shape
    agent, goal = grid_positions(grids)
    dist = distances(is_obstacle(grids), goal).flatten(1)
    length = dist.gather(1, agent[:, None]).squeeze(1)
    reachable = (length >= 0)[:, None]
    on_path = torch.zeros(n, height * width, dtype=torch.bool, device=grids.device)
    on_path.scatter_(1, agent[:, None], reachable)
    neighbours = neighbour_table(height, width).to(grids.device)
    cells = agent
    for _ in range(int(length.max().clamp(min=0))):
        cells = descend(dist, cells, neighbours)[1]
        on_path.scatter_(1, cells[:, None], reachable)
    return on_path.view(n, height, width)
