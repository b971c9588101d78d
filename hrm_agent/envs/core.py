"""The batched environment core: B dynamic-door gridworlds stepped as tensors in one call.

Both environments of the paper (paper-notes §1) share everything but their map: a fixed map,
a start and a goal drawn uniformly from the free cells, and closed doors on a known set of
door cells, redrawn with probability `p_change` after every move. Subclasses give the map,
the door cells and the door token; the maze adds fixed walls (`_place_fixed_walls`).

Per env the state is the agent's flat cell index and `terrain`, the observation without the
agent (map, fixed walls, closed doors, `>` and `<`), so "can the agent enter this cell" is one
lookup and rendering is one write.

`step` reads nothing back from the device (no `.item()`, no `nonzero`, no shape that depends
on the data), so on a GPU it only queues kernels, except at the end of every window of
`WINDOW` steps (`_next_window`), where the host reads one small tensor:
- Finished envs take the next episodes of a queue drawn ahead (`_next_episodes`), a ring read
  by index arithmetic on a device-side count of the episodes taken, for all B envs at once and
  kept where an env finished. Each env finishes at most once per step, so the ring holds at
  least `WINDOW * num_envs` unused episodes at the start of a window and is refilled, if
  needed, at its end, after reading how many were taken (drawing episodes is data dependent
  anyway: the maze's wall placement runs a BFS until it converges).
- The doors' Bernoulli(p_change) draws do not depend on the envs' state, so they are drawn
  for the whole next window at its start, with the envs that have a move at each step listed
  first; the same host read brings their count per step, so a step redraws just those envs,
  not all B, with shapes the host knows.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from hrm_agent.envs.grid import (AGENT, FLOOR, GOAL, START, STEP_PENALTY, WIN_REWARD, is_obstacle,
                                 neighbour_table)
from hrm_agent.envs.oracle import shortest_path_lengths


class DynamicDoorsEnv:
    """B copies of a dynamic-door gridworld on one torch device (see the module docstring).

    Step order (paper-notes §1.1-1.4): move or bump, check the goal, redraw the doors (so the
    returned observation already shows the new doors), truncate at `max_steps`, and reset the
    envs that finished (same-step autoreset: `info["final_obs"]` keeps their last observation).

    With `WINDOW` = 32, a GPU sees one host read per 32 steps (and the BFS syncs of the maze's
    episode draws); the queue of a 4096-env maze holds 131,136 episodes, about 45 MB.
    """

    name: ClassVar[str]
    map: ClassVar[Tensor]  # (H, W) uint8 tokens without doors or markers
    door_cells: ClassVar[Tensor]  # (D,) flat cells where closed doors may be drawn
    door_token: ClassVar[int]
    num_actions: ClassVar[int] = 4
    WINDOW: ClassVar[int] = 32  # steps per host read (see the module docstring)
    MIN_DRAW: ClassVar[int] = 64  # fewest episodes drawn at once (matters for small batches only)
    DRAW_CHUNK: ClassVar[int] = 16384  # most episodes drawn at once (see _draw_episodes)

    _state = ("agent", "start", "goal", "doors", "terrain", "elapsed", "returns")

    def __init__(self, num_envs: int = 1, *, device: str | torch.device = "cpu",
                 seed: int | None = None, p_change: float = 0.05, max_steps: int = 80,
                 closed_doors: int = 1, door_redraw: Literal["joint", "independent"] = "joint",
                 draw_doors_at_reset: bool = False):
        check_int("num_envs", num_envs, minimum=1)
        check_int("max_steps", max_steps, minimum=1)
        check_int("closed_doors", closed_doors, minimum=0)
        if door_redraw not in ("joint", "independent"):
            raise ValueError(f"door_redraw must be 'joint' or 'independent', got {door_redraw!r}")
        if not isinstance(draw_doors_at_reset, bool):
            raise ValueError(f"draw_doors_at_reset must be True or False, got {draw_doors_at_reset!r}")
        self.num_envs = num_envs
        self.device = torch.device(device)
        self._movers: Tensor | None = None  # see below; set before p_change, which may redraw them
        self.p_change = p_change
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
        self._env = torch.arange(num_envs, device=self.device)
        self._row = self._env * self.seq_len  # flat row offsets
        self.agent: Tensor | None = None  # set by reset()
        # the queue: a ring of `_capacity` drawn episodes, `_unused` of them from slot `_front`
        # at the start of the window, `_taken` (on the device) taken in it so far
        self._capacity = self.WINDOW * num_envs + self.MIN_DRAW
        self._queue: dict[str, Tensor] | None = None
        self._front = self._unused = self._steps = 0  # _steps: steps into the window
        self._taken = torch.zeros((), dtype=torch.long, device=self.device)
        # per step of the window: the envs with a door move, their Bernoullis, how many they are
        # (_movers: (WINDOW, most) long, set by _next_window)
        self._moves: Tensor | None = None  # (WINDOW, most, Bernoullis per env) bool
        self._mover_counts: list[int] = []

    # -- public API ---------------------------------------------------------------------------
    @property
    def p_change(self) -> float:
        return self._p_change

    @p_change.setter
    def p_change(self, value: float) -> None:
        """A new door probability holds from the next step on (the play widget's slider): the
        rest of the window's door moves are drawn again, at the cost of one host read."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"p_change must be a probability in [0, 1], got {value!r}")
        self._p_change = float(value)
        if self._movers is not None:
            self._use_door_moves(_to_host(self._draw_door_moves()))

    def reset(self, seed: int | None = None) -> Tensor:
        """Start a new episode in every env; (B, seq_len) uint8 first observations.

        `seed` reseeds the env's generator, so the same seed reproduces everything after it.
        Ends the window (a host read)."""
        if seed is not None:
            check_int("seed", seed, minimum=0)
            self.generator.manual_seed(seed)
            self._queue = None  # episodes drawn before reseeding
        if self._queue is None:
            self._queue = self._draw_episodes(self._capacity)
            self._front, self._unused, self._taken = 0, self._capacity, torch.zeros_like(self._taken)
        episodes = self._next_episodes(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        self._next_window()
        self.start, self.goal, self.doors = episodes["start"], episodes["goal"], episodes["doors"]
        self.terrain, self.agent = episodes["terrain"], self.start.clone()
        self.elapsed = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self.returns = torch.zeros(self.num_envs, dtype=torch.float32, device=self.device)
        return episodes["first_obs"]

    def step(self, actions, *,
             check: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Move every env one step; returns (obs, reward, terminated, truncated, info).

        actions: (B,) integers, 0=N 1=E 2=S 3=W. info: `final_obs` (B, seq_len) uint8, the last
        observation of each env (the finished episode's for envs that were reset);
        `episode_return` float32 and `episode_length` long, valid where terminated | truncated;
        `success` bool (the goal was reached); `doors_changed` bool (the set of closed doors
        changed in this step's redraw).

        `check=False` skips the range check of the action values, the one host read (a GPU
        sync) of a step that does not end a window; for callers whose actions are valid by
        construction (the trainer's come from argmax / randint over the 4 actions). Shape and
        dtype are always checked; an out-of-range value then goes undetected (it moves the agent
        to a wrong cell)."""
        if self.agent is None:
            raise RuntimeError("call reset() before step()")
        actions = self._check_actions(actions, values=check)
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
        new = self._next_episodes(done)
        self._steps += 1
        if self._steps == self.WINDOW:
            self._next_window()
        self.start = torch.where(done, new["start"], self.start)
        self.goal = torch.where(done, new["goal"], self.goal)
        self.agent = torch.where(done, new["start"], self.agent)
        self.doors = torch.where(done[:, None], new["doors"], self.doors)
        # torch.where for the byte rows too, as a gather (a CPU `where` on bytes is slow)
        rows = self._env + done * self.num_envs  # row i of old, or row i of new stacked below
        self.terrain = torch.cat([self.terrain, new["terrain"]]).index_select(0, rows)
        obs = torch.cat([final_obs, new["first_obs"]]).index_select(0, rows)
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
                "queue": {key: value.clone() for key, value in self._queue.items()},
                "window": {"front": self._front, "unused": self._unused, "taken": self._taken.clone(),
                           "steps": self._steps, "movers": self._movers.clone(),
                           "moves": self._moves.clone(), "mover_counts": list(self._mover_counts)},
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state["state"].items():
            if value.shape[0] != self.num_envs:
                raise ValueError(f"state {key!r} holds {value.shape[0]} envs, this env has {self.num_envs}")
            setattr(self, key, value.to(self.device).clone())
        queue = {key: value.to(self.device).clone() for key, value in state["queue"].items()}
        self.generator.set_state(state["generator"])
        if "window" not in state:  # written before the windows: a queue of unused episodes
            unused = min(len(queue["start"]), self._capacity)
            self._queue = {key: value.new_zeros(self._capacity, *value.shape[1:])
                           for key, value in queue.items()}
            for key, value in queue.items():
                self._queue[key][:unused] = value[:unused]
            self._front, self._unused, self._taken = 0, unused, torch.zeros_like(self._taken)
            self._next_window()  # refills the queue and draws the door moves
            return
        if len(queue["start"]) != self._capacity:
            raise ValueError(f"the state's episode queue holds {len(queue['start'])} episodes, "
                             f"this env's holds {self._capacity}")
        window = state["window"]
        self._queue, self._front, self._unused = queue, window["front"], window["unused"]
        self._steps, self._mover_counts = window["steps"], list(window["mover_counts"])
        self._taken, self._movers, self._moves = (window[key].to(self.device).clone()
                                                   for key in ("taken", "movers", "moves"))

    # -- episode start -----------------------------------------------------------------------
    def _next_episodes(self, take: Tensor) -> dict[str, Tensor]:
        """The next queued episodes for the envs where `take` (B,) bool holds, in env order.

        No host read: every env gets a row (the others an arbitrary queued episode, for the
        caller to drop), and the count of taken episodes stays on the device."""
        taken = self._taken + take.cumsum(0)  # after each env
        slots = (taken + (self._front - 1)).remainder_(self._capacity)
        self._taken = taken[-1]
        return {key: value.index_select(0, slots) for key, value in self._queue.items()}

    def _next_window(self) -> None:
        """End the window: draw the door moves of the next one, read on the host how many
        episodes were taken and how many envs move at each step (one host read: a GPU sync),
        and refill the queue if fewer than `WINDOW * num_envs` episodes are left (drawing
        at least `MIN_DRAW`, and in the maze syncing in its BFS)."""
        counts = self._draw_door_moves()
        taken, *counts = _to_host(torch.cat([self._taken[None], counts]))
        self._use_door_moves(counts)
        self._front = (self._front + taken) % self._capacity
        self._unused -= taken
        self._taken, self._steps = torch.zeros_like(self._taken), 0
        if self._unused < self.WINDOW * self.num_envs:
            n = self._capacity - self._unused
            slots = torch.arange(self._front + self._unused, self._front + self._capacity,
                                 device=self.device) % self._capacity
            for key, value in self._draw_episodes(n).items():
                self._queue[key].index_copy_(0, slots, value)
            self._unused = self._capacity

    def _draw_episodes(self, n: int) -> dict[str, Tensor]:
        """Draw `n` new episodes: goal, start, fixed walls and doors, and the first observation.

        In chunks of at most `DRAW_CHUNK`, which bounds the memory of the maze's BFS (about
        4 kB per episode; the first queue of 4096 envs holds 131,136)."""
        chunks = [self._draw_chunk(min(self.DRAW_CHUNK, n - i)) for i in range(0, n, self.DRAW_CHUNK)]
        return {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}

    def _draw_chunk(self, n: int) -> dict[str, Tensor]:
        free, gen, dev = len(self.free_cells), self.generator, self.device
        goal_index = torch.randint(free, (n,), generator=gen, device=dev)
        start_index = torch.randint(free - 1, (n,), generator=gen, device=dev)
        start_index += start_index >= goal_index  # uniform over the free cells but the goal
        goal, start = self.free_cells[goal_index], self.free_cells[start_index]
        row = torch.arange(n, device=dev) * self.seq_len
        terrain = self.base.repeat(n, 1)
        terrain.view(-1).index_fill_(0, row + goal, GOAL).index_fill_(0, row + start, START)
        self._place_fixed_walls(terrain, start, goal)
        doors = self._draw_door_cells(terrain, start, self.closed_doors)
        terrain.scatter_(1, doors, self.door_token)
        # the authors' reset observation shows no doors and no fixed walls (paper-notes §1.1)
        first_obs = (terrain if self.draw_doors_at_reset else self.base.repeat(n, 1)).clone()
        first_obs.view(-1).index_fill_(0, row + goal, GOAL).index_fill_(0, row + start, AGENT)
        return {"start": start, "goal": goal, "doors": doors, "terrain": terrain, "first_obs": first_obs}

    def _place_fixed_walls(self, terrain: Tensor, start: Tensor, goal: Tensor) -> None:
        """Hook for walls that stay put for the whole episode (the maze's); none by default."""

    # -- door dynamics -----------------------------------------------------------------------
    def _draw_door_moves(self) -> Tensor:
        """Draw the door Bernoullis of the next window (one per env and step, or one per door
        for "independent") and list, per step, the envs with a move first, in env order; returns
        (WINDOW,) how many envs move at each step."""
        draws = self.closed_doors if self.door_redraw == "independent" else 1  # Bernoullis per env
        moves = torch.rand(self.WINDOW, self.num_envs, draws, generator=self.generator,
                           device=self.device) < self.p_change
        moved = moves.any(2)
        self._movers = moved.byte().sort(dim=1, descending=True, stable=True).indices
        self._moves = moves.gather(1, self._movers[:, :, None].expand(-1, -1, draws))
        return moved.sum(1)

    def _use_door_moves(self, counts: list[int]) -> None:
        """Keep the drawn moves, cut to the most envs that move at any step of the window."""
        self._mover_counts = counts
        most = max(counts)
        self._movers, self._moves = self._movers[:, :most], self._moves[:, :most]

    def _redraw_doors(self) -> Tensor:
        """Redraw doors after the move; (B,) bool: did the set of closed doors change.

        "joint" (the authors' code): one Bernoulli(p) per env and step redraws all doors together
        from the allowed cells (door cells that are open, not the goal, not the agent's cell); the
        new set may overlap or equal the old one. "independent" (our reading of the paper's "each
        door independently opens/closes with probability 1/20"): every door, with its own
        Bernoulli(p), moves to a uniformly drawn allowed cell not held by another door (possibly
        the cell it is on), so the number of closed doors stays constant.

        Redraws just the envs with a move at this step (`_draw_door_moves`), as many as the host
        read at the start of the window.
        """
        changed = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        movers = self._mover_counts[self._steps]
        if not movers or not self.closed_doors:
            return changed
        envs, moves = self._movers[self._steps, :movers], self._moves[self._steps, :movers]
        old, terrain = self.doors.index_select(0, envs), self.terrain.index_select(0, envs)
        agent, start = self.agent.index_select(0, envs), self.start.index_select(0, envs)[:, None]
        if self.door_redraw == "joint":
            terrain.scatter_(1, old, self._lifted(old, start))
            new = self._draw_door_cells(terrain, agent, self.closed_doors)
            terrain.scatter_(1, new, self.door_token)
        else:
            new = old.clone()
            for j in range(self.closed_doors):  # lift door j, draw its new cell, put it down
                terrain.scatter_(1, old[:, j, None], self._lifted(old[:, j, None], start))
                drawn = self._draw_door_cells(terrain, agent, 1)[:, 0]
                new[:, j] = torch.where(moves[:, j], drawn, old[:, j])
                terrain.scatter_(1, new[:, j, None], self.door_token)
        self.doors.index_copy_(0, envs, new)
        self.terrain.index_copy_(0, envs, terrain)
        if self.closed_doors > 1:  # compare as sets
            new, old = new.sort(1).values, old.sort(1).values
        return changed.index_copy_(0, envs, (new != old).any(1))

    @staticmethod
    def _lifted(cells: Tensor, start: Tensor) -> Tensor:
        """Tokens under lifted doors: `<` on the start cell (a door may cover it), else floor."""
        return torch.where(cells == start, START, FLOOR).to(torch.uint8)

    def _door_options(self, terrain: Tensor, agent: Tensor) -> Tensor:
        """(n, D) bool: door cells a door may be drawn on: open floor or the start marker, not
        the goal (`>`), not the agent's cell."""
        tokens = terrain[:, self.door_cells]
        return ((tokens == FLOOR) | (tokens == START)) & (self.door_cells != agent[:, None])

    def _draw_door_cells(self, terrain: Tensor, agent: Tensor, k: int) -> Tensor:
        """(n, k) distinct door cells per row of `terrain` (n, seq_len), uniform among the
        cells a door may be drawn on (`_door_options`)."""
        return self.door_cells[self._choose(self._door_options(terrain, agent), k)]

    def _choose(self, allowed: Tensor, k: int) -> Tensor:
        """k distinct column indices per row, uniform among the True entries of `allowed` (n, D).

        Uniform random keys, with the disallowed ones pushed below every allowed key; the top k
        keys, in order, are uniform draws without replacement (each row must allow k columns)."""
        keys = torch.rand(allowed.shape, generator=self.generator, device=self.device)
        return keys.masked_fill_(~allowed, -1.0).topk(k, dim=-1).indices

    # -- inputs -------------------------------------------------------------------------------
    def _check_actions(self, actions, *, values: bool) -> Tensor:
        """`actions` as a (B,) long tensor on the device; ValueError for a wrong shape or dtype,
        and with `values` for values outside 0..3 (one host read: a GPU sync)."""
        if not isinstance(actions, Tensor):
            actions = torch.as_tensor(np.asarray(actions))
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {tuple(actions.shape)}")
        if actions.dtype.is_floating_point or actions.dtype.is_complex or actions.dtype == torch.bool:
            raise ValueError(f"actions must be integers, got dtype {actions.dtype}")
        actions = actions.to(self.device, torch.long)
        if not values:
            return actions
        low, high = _to_host(torch.stack(torch.aminmax(actions)))
        if low < 0 or high >= self.num_actions:
            raise ValueError(f"actions must be in 0..{self.num_actions - 1} (N, E, S, W), "
                             f"got values in {low}..{high}")
        return actions

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_envs={self.num_envs}, device={str(self.device)!r}, "
                f"p_change={self.p_change}, max_steps={self.max_steps})")


def _to_host(tensor: Tensor) -> list:
    """`tensor.tolist()` through an explicit copy to the host: how `step` reads the device (on
    a GPU a sync), explicit so that a test on the CPU sees it too."""
    return tensor.to("cpu", copy=True).tolist()


def check_int(name: str, value: Any, *, minimum: int) -> None:
    """Raise ValueError unless `value` is an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
