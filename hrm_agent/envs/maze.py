"""Random maze (`MiniHack-Corridor-Maze-4-Way-Dynamic`, paper-notes §1.3): a grid of 30 rooms
joined by 49 door slots, with 10 fixed walls and 5 dynamic doors on the slots."""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from hrm_agent.envs.core import DynamicDoorsEnv, check_int
from hrm_agent.envs.grid import DOOR, WALL_V, is_obstacle, parse_map
from hrm_agent.envs.oracle import shortest_path_lengths

# The whole 11x13 map including its border (the observation crop keeps it): rooms at
# (odd, odd), permanent pillars `|` at (even, even), door slots at the other inner cells.
MAZE_MAP = """
    -------------
    |...........|
    |.|.|.|.|.|.|
    |...........|
    |.|.|.|.|.|.|
    |...........|
    |.|.|.|.|.|.|
    |...........|
    |.|.|.|.|.|.|
    |...........|
    -------------
"""
SLOTS = tuple((r, c) for r in range(1, 10) for c in range(1, 12) if (r + c) % 2 == 1)  # 49


class Maze(DynamicDoorsEnv):
    """B random mazes. At reset, `fixed_walls` walls `|` are placed on slots one at a time, each
    kept only if the agent can still reach the goal (up to `wall_tries` tries per wall, skipped
    silently if all fail), then `closed_doors` dynamic doors `#` are drawn on free slots with no
    path check, so a door can cut the agent off for a while. Slots exclude the goal's cell and
    the agent's cell. Fixed walls never move; doors are redrawn as `door_redraw` says
    (`DynamicDoorsEnv._redraw_doors`): "joint" is the authors' code, "independent" the paper text.
    """

    name = "maze"
    map: ClassVar[Tensor] = parse_map(MAZE_MAP)
    door_cells: ClassVar[Tensor] = torch.tensor([r * 13 + c for r, c in SLOTS])
    door_token = DOOR

    def __init__(self, num_envs: int = 1, *, device: str | torch.device = "cpu",
                 seed: int | None = None, p_change: float = 0.05, max_steps: int = 80,
                 fixed_walls: int = 10, closed_doors: int = 5,
                 door_redraw: Literal["joint", "independent"] = "joint",
                 draw_doors_at_reset: bool = False, wall_tries: int = 10):
        check_int("fixed_walls", fixed_walls, minimum=0)
        check_int("closed_doors", closed_doors, minimum=0)
        check_int("wall_tries", wall_tries, minimum=1)
        usable = len(SLOTS) - 2  # the goal's and the agent's cells may be slots
        if fixed_walls + closed_doors > usable:
            raise ValueError(f"fixed_walls + closed_doors must be <= {usable}, "
                             f"got {fixed_walls} + {closed_doors}")
        self.fixed_walls = fixed_walls
        self.wall_tries = wall_tries
        super().__init__(num_envs, device=device, seed=seed, p_change=p_change,
                         max_steps=max_steps, closed_doors=closed_doors, door_redraw=door_redraw,
                         draw_doors_at_reset=draw_doors_at_reset)

    def fixed_wall_counts(self) -> Tensor:
        """(B,) long: fixed walls placed in each env (fewer than `fixed_walls` when a wall had no
        try that kept a path)."""
        return (self.terrain[:, self.door_cells] == WALL_V).sum(1)

    def _place_fixed_walls(self, terrain: Tensor, start: Tensor, goal: Tensor) -> None:
        """Add the fixed walls to `terrain` (n, seq_len) in place, as the authors do: wall by
        wall, up to `wall_tries` uniform tries each (with replacement), a try kept only if the
        agent can still reach the goal.

        Exact shortcut: every wall's first try is drawn up front and all of them are checked in
        one batched BFS. Where the goal is still reachable, the wall-by-wall process would have
        kept every first try (fewer walls never cut a path), so it is done; only the few envs
        where it is not (about 2%) go wall by wall, reusing the first tries until one fails."""
        first_tries = self._draw_door_cells(terrain, start, self.fixed_walls)
        with_all = terrain.scatter(1, first_tries, WALL_V)
        done = self._goal_reachable(with_all, start, goal)
        terrain.copy_(torch.where(done[:, None], with_all, terrain))
        rest = (~done).nonzero().squeeze(1)
        if len(rest):
            terrain[rest] = self._walls_one_by_one(terrain[rest], start[rest], goal[rest],
                                                   first_tries[rest])

    def _walls_one_by_one(self, terrain: Tensor, start: Tensor, goal: Tensor,
                          first_tries: Tensor) -> Tensor:
        """The wall-by-wall process on a few envs; returns their new terrain."""
        failed_before = torch.zeros(len(terrain), dtype=torch.bool, device=self.device)
        for wall in range(self.fixed_walls):
            placed = torch.zeros_like(failed_before)
            for attempt in range(self.wall_tries):
                drawn = self._draw_door_cells(terrain, start, 1)[:, 0]
                if attempt == 0:  # the up-front draw is this try's draw until a try has failed
                    drawn = torch.where(failed_before, drawn, first_tries[:, wall])
                trial = terrain.scatter(1, drawn[:, None], WALL_V)
                kept = ~placed & self._goal_reachable(trial, start, goal)
                terrain = torch.where(kept[:, None], trial, terrain)
                if attempt == 0:
                    failed_before |= ~kept
                placed |= kept
                if placed.all():
                    break
        return terrain

    def _goal_reachable(self, terrain: Tensor, start: Tensor, goal: Tensor) -> Tensor:
        obstacles = is_obstacle(terrain).view(-1, self.height, self.width)
        return shortest_path_lengths(obstacles, start, goal) >= 0
