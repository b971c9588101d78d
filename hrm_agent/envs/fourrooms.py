"""Four-rooms (`MiniHack-4-Rooms`, paper-notes §1.2): one of the four doorways is closed at all times."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from hrm_agent.envs.core import DynamicDoorsEnv
from hrm_agent.envs.grid import WALL_V, parse_map

# The 11x11 interior exactly as NetHack renders it (the observation crop has no outer wall);
# doorways at (2,5), (5,1), (6,8), (9,5).
FOURROOMS_MAP = """
    .....|.....
    .....|.....
    ...........
    .....|.....
    .....|.....
    -.---|.....
    .....|--.--
    .....|.....
    .....|.....
    ...........
    .....|.....
"""
DOORWAYS = ((2, 5), (5, 1), (6, 8), (9, 5))


class FourRooms(DynamicDoorsEnv):
    """B four-rooms envs. The closed doorway is drawn as `|` (the wall token, so inside a
    vertical wall it cannot be told apart from the wall) and is redrawn with probability
    `p_change` per step uniformly among the doorways that are neither the goal nor the agent's
    cell, possibly onto the same doorway. Moving off the 11x11 grid is a bump.

    With `p_change=0` the one door drawn at reset stays closed for the whole episode (the
    authors' class would then draw no door at all; their runs used 0.05).
    """

    name = "fourrooms"
    map: ClassVar[Tensor] = parse_map(FOURROOMS_MAP)
    door_cells: ClassVar[Tensor] = torch.tensor([r * 11 + c for r, c in DOORWAYS])
    door_token = WALL_V

    def __init__(self, num_envs: int = 1, *, device: str | torch.device = "cpu",
                 seed: int | None = None, p_change: float = 0.05, max_steps: int = 80,
                 draw_doors_at_reset: bool = False):
        super().__init__(num_envs, device=device, seed=seed, p_change=p_change,
                         max_steps=max_steps, closed_doors=1,
                         draw_doors_at_reset=draw_doors_at_reset)
