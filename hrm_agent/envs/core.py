"""The batched environment core: B dynamic-door gridworlds stepped as tensors in one call.

Both environments of the paper (paper-notes §1) share everything but their map: a fixed map,
a start and a goal drawn uniformly from the free cells, and closed doors on a known set of
door cells, redrawn with probability `p_change` after every move. Subclasses give the map,
the door cells and the door token; the maze adds fixed walls (`_place_fixed_walls`).

Per env the state is the agent's flat cell index and `terrain`, the observation without the
agent (map, fixed walls, closed doors, `>` and `<`), so "can the agent enter this cell" is one
lookup and rendering is one write. New episodes are drawn ahead, in batches of at least
`num_envs` (`_draw_episodes`), so the few envs that finish in a step are reset with a handful
of index operations instead of a full draw with many small tensor operations.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from hrm_agent.envs.grid import (AGENT, FLOOR, GOAL, START, STEP_PENALTY, WIN_REWARD, is_obstacle,
                                 neighbour_table)
from hrm_agent.envs.oracle import shortest_path_lengths

MIN_DRAW = 64  # fewest episodes drawn at once (matters for small batches only)


class DynamicDoorsEnv:
    """B copies of a dynamic-door gridworld on one torch device (see the module docstring).

    Step order (paper-notes §1.1-1.4): move or bump, check the goal, redraw the doors (so the
    returned observation already shows the new doors), truncate at `max_steps`, and reset the
    envs that finished (same-step autoreset: `info["final_obs"]` keeps their last observation).
    """

    name: ClassVar[str]
    map: ClassVar[Tensor]  # (H, W) uint8 tokens without doors or markers
    door_cells: ClassVar[Tensor]  # (D,) flat cells where closed doors may be drawn
    door_token: ClassVar[int]
    num_actions: ClassVar[int] = 4

    _state = ("agent", "start", "goal", "doors", "terrain", "elapsed", "returns")

    def __init__(self, num_envs: int = 1, *, device: str | torch.device = "cpu",
                 seed: int | None = None, p_change: float = 0.05, max_steps: int = 80,
                 closed_doors: int = 1, door_redraw: Literal["joint", "independent"] = "joint",
                 draw_doors_at_reset: bool = False):
        check_int("num_envs", num_envs, minimum=1)
        check_int("max_steps", max_steps, minimum=1)
        check_int("closed_doors", closed_doors, minimum=0)
        if isinstance(p_change, bool) or not isinstance(p_change, (int, float)) or not 0 <= p_change <= 1:
            raise ValueError(f"p_change must be a probability in [0, 1], got {p_change!r}")
        if door_redraw not in ("joint", "independent"):
            raise ValueError(f"door_redraw must be 'joint' or 'independent', got {door_redraw!r}")
        if not isinstance(draw_doors_at_reset, bool):
            raise ValueError(f"draw_doors_at_reset must be True or False, got {draw_doors_at_reset!r}")
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.p_change = float(p_change)
        self.max_steps = max_steps
        self.closed_doors = closed_doors
        self.door_redraw = door_redraw
        self.draw_doors_at_reset = draw_doors_at_reset
        self.height, self.width = self.map.shape
        self.seq_len = self.height * self.width

        self.generator = torch.Generator(self.device)
        if seed is None:
            self.generator.seed()
        else:
            check_int("seed", seed, minimum=0)
            self.generator.manual_seed(seed)
        self.base = self.map.flatten().to(self.device)
        self.free_cells = (self.base == FLOOR).nonzero().squeeze(1)
        self.door_cells = self.door_cells.to(self.device)
        self.neighbours = neighbour_table(self.height, self.width).to(self.device)
        self._flat_neighbours = self.neighbours.flatten()
        self._row = torch.arange(num_envs, device=self.device) * self.seq_len  # flat row offsets
        self.agent: Tensor | None = None  # set by reset()
        self._queue: dict[str, Tensor] | None = None  # episodes drawn ahead, see _next_episodes
        self._queued = 0  # how many of them are used

    # -- public API ---------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> Tensor:
        """Start a new episode in every env; (B, seq_len) uint8 first observations.

        `seed` reseeds the env's generator, so the same seed reproduces everything after it."""
        if seed is not None:
            check_int("seed", seed, minimum=0)
            self.generator.manual_seed(seed)
            self._queue = None  # episodes drawn before reseeding
        episodes = {key: value.clone() for key, value in self._next_episodes(self.num_envs).items()}
        self.start, self.goal, self.doors = episodes["start"], episodes["goal"], episodes["doors"]
        self.terrain, self.agent = episodes["terrain"], self.start.clone()
        self.elapsed = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self.returns = torch.zeros(self.num_envs, dtype=torch.float32, device=self.device)
        return episodes["first_obs"]

    def step(self, actions) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Move every env one step; returns (obs, reward, terminated, truncated, info).

        actions: (B,) integers, 0=N 1=E 2=S 3=W. info: `final_obs` (B, seq_len) uint8, the last
        observation of each env (the finished episode's for envs that were reset);
        `episode_return` float32 and `episode_length` long, valid where terminated | truncated;
        `success` bool (the goal was reached); `doors_changed` bool (the set of closed doors
        changed in this step's redraw)."""
        if self.agent is None:
            raise RuntimeError("call reset() before step()")
        actions = self._check_actions(actions)
        target = self._flat_neighbours.take(torch.add(actions, self.agent, alpha=4))
        bumped = is_obstacle(self.terrain.view(-1).take(self._row + target)) | (target == self.agent)
        self.agent = torch.where(bumped, self.agent, target)
        terminated = self.agent == self.goal
        reward = torch.zeros(self.num_envs, device=self.device).masked_fill_(bumped, STEP_PENALTY)
        reward.masked_fill_(terminated, WIN_REWARD)
        length = self.elapsed + 1
        truncated = (length >= self.max_steps) & ~terminated
        episode_return = self.returns + reward
        doors_changed = self._redraw_doors()
        final_obs = self.terrain.clone()
        final_obs.view(-1).index_fill_(0, self._row + self.agent, AGENT)

        done = terminated | truncated
        self.elapsed = torch.where(done, 0, length)
        self.returns = torch.where(done, 0.0, episode_return)
        obs = final_obs.clone()
        finished = done.nonzero().squeeze(1)
        if len(finished):
            episodes = self._next_episodes(len(finished))
            for key in ("start", "goal", "doors", "terrain"):
                getattr(self, key)[finished] = episodes[key]
            self.agent[finished] = episodes["start"]
            obs[finished] = episodes["first_obs"]
        info = {"final_obs": final_obs, "episode_return": episode_return, "episode_length": length,
                "success": terminated, "doors_changed": doors_changed}
        return obs, reward, terminated, truncated, info

    def obstacles(self, doors: bool = True) -> Tensor:
        """(B, H, W) bool cells the agent cannot enter now; `doors=False` opens the dynamic doors."""
        blocked = is_obstacle(self.terrain)
        if not doors:
            blocked = blocked.scatter(1, self.doors, False)
        return blocked.view(self.num_envs, self.height, self.width)

    def shortest_path_lengths(self) -> Tensor:
        """(B,) long BFS moves from the agent to the goal under the current doors, -1 if cut off."""
        return shortest_path_lengths(self.obstacles(), self.agent, self.goal)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this env is (for checkpoints)."""
        if self.agent is None:
            raise RuntimeError("call reset() before state_dict()")
        return {"state": {key: getattr(self, key).clone() for key in self._state},
                "queue": {key: value[self._queued:].clone() for key, value in self._queue.items()},
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state["state"].items():
            if value.shape[0] != self.num_envs:
                raise ValueError(f"state {key!r} holds {value.shape[0]} envs, this env has {self.num_envs}")
            setattr(self, key, value.to(self.device).clone())
        self._queue = {key: value.to(self.device).clone() for key, value in state["queue"].items()}
        self._queued = 0
        self.generator.set_state(state["generator"])

    # -- episode start -----------------------------------------------------------------------
    def _next_episodes(self, n: int) -> dict[str, Tensor]:
        """The next `n` drawn episodes, drawing a new batch when too few are left."""
        left = 0 if self._queue is None else len(self._queue["start"]) - self._queued
        if left < n:
            fresh = self._draw_episodes(max(self.num_envs, MIN_DRAW))
            if left:
                fresh = {key: torch.cat([self._queue[key][self._queued:], fresh[key]]) for key in fresh}
            self._queue, self._queued = fresh, 0
        taken = {key: value[self._queued: self._queued + n] for key, value in self._queue.items()}
        self._queued += n
        return taken

    def _draw_episodes(self, n: int) -> dict[str, Tensor]:
        """Draw `n` new episodes: goal, start, fixed walls and doors, and the first observation."""
        free, gen, dev = len(self.free_cells), self.generator, self.device
        goal_index = torch.randint(free, (n,), generator=gen, device=dev)
        start_index = torch.randint(free - 1, (n,), generator=gen, device=dev)
        start_index += start_index >= goal_index  # uniform over the free cells but the goal
        goal, start = self.free_cells[goal_index], self.free_cells[start_index]
        row = torch.arange(n, device=dev) * self.seq_len
        terrain = self.base.repeat(n, 1)
        terrain.view(-1).index_fill_(0, row + goal, GOAL).index_fill_(0, row + start, START)
        self._place_fixed_walls(terrain, start, goal)
        doors = self.door_cells[self._choose(self._door_options(terrain, start), self.closed_doors)]
        terrain.scatter_(1, doors, self.door_token)
        # the authors' reset observation shows no doors and no fixed walls (paper-notes §1.1)
        first_obs = (terrain if self.draw_doors_at_reset else self.base.repeat(n, 1)).clone()
        first_obs.view(-1).index_fill_(0, row + goal, GOAL).index_fill_(0, row + start, AGENT)
        return {"start": start, "goal": goal, "doors": doors, "terrain": terrain, "first_obs": first_obs}

    def _place_fixed_walls(self, terrain: Tensor, start: Tensor, goal: Tensor) -> None:
        """Hook for walls that stay put for the whole episode (the maze's); none by default."""

    # -- door dynamics -----------------------------------------------------------------------
    def _redraw_doors(self) -> Tensor:
        """Redraw doors after the move; (B,) bool: did the set of closed doors change.

        "joint" (the authors' code): one Bernoulli(p) per env and step redraws all doors together
        from the allowed cells (door cells that are open, not the goal, not the agent's cell); the
        new set may overlap or equal the old one. "independent" (our reading of the paper's "each
        door independently opens/closes with probability 1/20"): every door, with its own
        Bernoulli(p), moves to a uniformly drawn allowed cell not held by another door (possibly
        the cell it is on), so the number of closed doors stays constant.
        """
        changed = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        draws = self.closed_doors if self.door_redraw == "independent" else 1  # Bernoullis per env
        moves = torch.rand(self.num_envs, draws, generator=self.generator, device=self.device) < self.p_change
        envs = moves.any(1).nonzero().squeeze(1)
        if not len(envs) or not self.closed_doors:
            return changed
        old, terrain, agent = self.doors[envs], self.terrain[envs], self.agent[envs]
        start = self.start[envs, None]
        if self.door_redraw == "joint":
            terrain.scatter_(1, old, self._lifted(old, start))
            new = self.door_cells[self._choose(self._door_options(terrain, agent), self.closed_doors)]
            terrain.scatter_(1, new, self.door_token)
        else:
            new = old.clone()
            for j in range(self.closed_doors):  # lift door j, draw its new cell, put it down
                terrain.scatter_(1, old[:, j, None], self._lifted(old[:, j, None], start))
                drawn = self.door_cells[self._choose(self._door_options(terrain, agent), 1)]
                new[:, j] = torch.where(moves[envs, j], drawn[:, 0], old[:, j])
                terrain.scatter_(1, new[:, j, None], self.door_token)
        self.doors[envs], self.terrain[envs] = new, terrain
        if self.closed_doors > 1:  # compare as sets
            new, old = new.sort(1).values, old.sort(1).values
        changed[envs] = (new != old).any(1)
        return changed

    @staticmethod
    def _lifted(cells: Tensor, start: Tensor) -> Tensor:
        """Tokens under lifted doors: `<` on the start cell (a door may cover it), else floor."""
        return torch.where(cells == start, START, FLOOR).to(torch.uint8)

    def _door_options(self, terrain: Tensor, agent: Tensor) -> Tensor:
        """(n, D) bool: door cells a door may be drawn on: open floor or the start marker, not
        the goal (`>`), not the agent's cell."""
        tokens = terrain[:, self.door_cells]
        return ((tokens == FLOOR) | (tokens == START)) & (self.door_cells != agent[:, None])

    def _choose(self, allowed: Tensor, k: int) -> Tensor:
        """k distinct column indices per row, uniform among the True entries of `allowed` (n, D).

        Uniform random keys, with the disallowed ones pushed below every allowed key; the top k
        keys, in order, are uniform draws without replacement (each row must allow k columns)."""
        keys = torch.rand(allowed.shape, generator=self.generator, device=self.device)
        return keys.masked_fill_(~allowed, -1.0).topk(k, dim=-1).indices

    # -- inputs -------------------------------------------------------------------------------
    def _check_actions(self, actions) -> Tensor:
        if not isinstance(actions, Tensor):
            actions = torch.as_tensor(np.asarray(actions))
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {tuple(actions.shape)}")
        if actions.dtype.is_floating_point or actions.dtype.is_complex or actions.dtype == torch.bool:
            raise ValueError(f"actions must be integers, got dtype {actions.dtype}")
        actions = actions.to(self.device, torch.long)
        low, high = (int(x) for x in torch.aminmax(actions))
        if low < 0 or high >= self.num_actions:
            raise ValueError(f"actions must be in 0..{self.num_actions - 1} (N, E, S, W), "
                             f"got values in {low}..{high}")
        return actions

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_envs={self.num_envs}, device={str(self.device)!r}, "
                f"p_change={self.p_change}, max_steps={self.max_steps})")


def check_int(name: str, value: Any, *, minimum: int) -> None:
    """Raise ValueError unless `value` is an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
