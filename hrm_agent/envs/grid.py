"""The grid vocabulary shared by every environment: NetHack tokens, the four moves, map parsing.

Observations are the ASCII codes of the NetHack `chars` screen (paper-notes §1.5), so a token
is a plain `uint8` and a map can be written down as text.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

FLOOR = ord(".")  # 46
WALL_V = ord("|")  # 124: vertical wall, maze pillar, fixed wall, closed four-rooms door
WALL_H = ord("-")  # 45: horizontal wall
DOOR = ord("#")  # 35: closed dynamic maze door
AGENT = ord("@")  # 64
GOAL = ord(">")  # 62: down staircase
START = ord("<")  # 60: up staircase, shown once the agent has left it
OBSTACLE_TOKENS = (WALL_V, WALL_H, DOOR)

STEP_PENALTY = -0.01  # MiniHack `penalty_step`, paid when the agent bumps and does not move
WIN_REWARD = 1.0  # stepping onto the goal (the episode terminates)

ACTION_NAMES = ("N", "E", "S", "W")  # NLE CompassCardinalDirection order
ACTION_ARROWS = "↑→↓←"  # the same order, for pictures
MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))  # (d_row, d_col) per action


def parse_map(text: str) -> Tensor:
    """A (H, W) uint8 token grid from rows of ASCII text (blank lines and indentation ignored)."""
    rows = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len({len(r) for r in rows}) != 1:
        raise ValueError("map rows must all have the same length")
    return torch.tensor([[ord(ch) for ch in row] for row in rows], dtype=torch.uint8)


def neighbour_table(height: int, width: int) -> Tensor:
    """(H*W, 4) long: the flat cell reached from each cell by each action, or the cell itself
    when the move would leave the grid (so that a move off the grid is a bump)."""
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    table = []
    for d_row, d_col in MOVES:
        r, c = rows + d_row, cols + d_col
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        table.append(torch.where(inside, r * width + c, rows * width + cols))
    return torch.stack(table, dim=1)


_OBSTACLE_LOOKUP = torch.zeros(256, dtype=torch.bool)
_OBSTACLE_LOOKUP[list(OBSTACLE_TOKENS)] = True


@functools.cache
def _obstacle_lookup(device: torch.device) -> Tensor:
    """The lookup table on `device`, copied once: a copy at every call would be a blocking
    host-to-device copy (a sync) in every env step on a GPU."""
    return _OBSTACLE_LOOKUP.to(device)


def is_obstacle(tokens: Tensor) -> Tensor:
    """Cells the agent cannot enter: walls, pillars, fixed walls and closed doors."""
    return _obstacle_lookup(tokens.device).take(tokens.long())
