"""The batched environments against the rules of paper-notes §1, checked from the outside.

Most rule tests replay a random rollout against a pure-Python reading of the rules that sees
only the previous observation (with `draw_doors_at_reset=True` every observation shows every
obstacle). Because each env's expected transition is computed from its own observation alone,
the replay also shows that no env of a batch reads another env's state.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hrm_agent.envs import (AGENT, DOOR, FLOOR, GOAL, START, WALL_H, WALL_V, FourRooms, Maze,
                            make_env, oracle_actions, shortest_path_lengths)
from hrm_agent.envs.fourrooms import DOORWAYS
from hrm_agent.envs.maze import SLOTS
from tests.host_reads import HostReads

MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))
OBSTACLES = (WALL_V, WALL_H, DOOR)
ENV_CLASSES = (FourRooms, Maze)

FOURROOMS_PAPER = """\
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
.....|....."""  # paper-notes §1.2, as rendered by NetHack

MAZE_PAPER = """\
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
-------------"""  # paper-notes §1.3, at reset


def text(grid: np.ndarray) -> str:
    return "\n".join("".join(map(chr, row)) for row in grid)


def grids(env, obs: torch.Tensor) -> np.ndarray:
    return obs.cpu().numpy().reshape(-1, env.height, env.width)


def position(grid: np.ndarray, token: int) -> tuple[int, int] | None:
    cells = np.argwhere(grid == token)
    assert len(cells) <= 1, f"more than one {chr(token)!r}"
    return tuple(cells[0]) if len(cells) else None


def door_cells(env) -> set[tuple[int, int]]:
    return set(DOORWAYS if isinstance(env, FourRooms) else SLOTS)


# -- maps and crops ------------------------------------------------------------------------------

def test_fourrooms_map_is_the_papers_char_for_char():
    env = FourRooms(1, seed=0)
    assert (env.height, env.width, env.seq_len, env.num_actions, env.name) == (11, 11, 121, 4, "fourrooms")
    assert text(env.map.numpy()) == FOURROOMS_PAPER
    assert all(env.map[r, c] == FLOOR for r, c in DOORWAYS)
    assert int((env.map == FLOOR).sum()) == 104


def test_maze_map_has_border_pillars_rooms_and_49_slots():
    env = Maze(1, seed=0)
    assert (env.height, env.width, env.seq_len, env.name) == (11, 13, 143, "maze")
    grid = env.map.numpy()
    assert text(grid) == MAZE_PAPER
    assert (grid[[0, -1], :] == WALL_H).all() and (grid[1:-1, [0, -1]] == WALL_V).all()
    inner = [(r, c) for r in range(1, 10) for c in range(1, 12)]
    assert sum(r % 2 == 0 and c % 2 == 0 and grid[r, c] == WALL_V for r, c in inner) == 20
    assert sum(r % 2 == 1 and c % 2 == 1 and grid[r, c] == FLOOR for r, c in inner) == 30
    assert len(SLOTS) == 49 and all(grid[r, c] == FLOOR for r, c in SLOTS)


@pytest.mark.parametrize("cls", ENV_CLASSES)
def test_reset_observation_tokens_and_shape(cls):
    env = cls(32, seed=3)
    obs = env.reset()
    assert obs.shape == (32, env.seq_len) and obs.dtype == torch.uint8
    for grid in grids(env, obs):
        assert (grid == AGENT).sum() == 1 and (grid == GOAL).sum() == 1
        assert not (grid == START).any()  # the start marker is under the agent
        # the authors' quirk: no doors and no fixed walls in the reset observation
        assert (grid == env.map.numpy()).sum() == env.seq_len - 2


# -- a recorded random rollout, replayed against the rules --------------------------------------

def rollout(cls, steps: int = 200, num_envs: int = 64, **kwargs):
    """Random actions in a batch whose observations show every obstacle; returns the records."""
    env = cls(num_envs, seed=11, draw_doors_at_reset=True, **kwargs)
    rng = np.random.default_rng(0)
    obs = env.reset()
    starts = [position(g, AGENT) for g in grids(env, obs)]
    records = []
    for _ in range(steps):
        actions = rng.integers(4, size=num_envs)
        before = grids(env, obs)
        obs, reward, terminated, truncated, info = env.step(torch.as_tensor(actions))
        records.append(dict(before=before, actions=actions, obs=grids(env, obs),
                            final=grids(env, info["final_obs"]), reward=reward.numpy(),
                            terminated=terminated.numpy(), truncated=truncated.numpy(),
                            info={k: v.numpy() for k, v in info.items() if k != "final_obs"},
                            agent=env.agent.clone(), goal=env.goal.clone(), doors=env.doors.clone(),
                            starts=list(starts)))
        for i in np.flatnonzero(records[-1]["terminated"] | records[-1]["truncated"]):
            starts[i] = position(records[-1]["obs"][i], AGENT)
    return env, records


@pytest.fixture(scope="module", params=ENV_CLASSES, ids=lambda c: c.name)
def recorded(request):
    return rollout(request.param, p_change=0.3)


def expected_move(grid: np.ndarray, action: int):
    """The rules from the observation alone: (new position, bumped, reached goal)."""
    r, c = position(grid, AGENT)
    nr, nc = r + MOVES[action][0], c + MOVES[action][1]
    inside = 0 <= nr < grid.shape[0] and 0 <= nc < grid.shape[1]
    if not inside or grid[nr, nc] in OBSTACLES:
        return (r, c), True, False
    return (nr, nc), False, grid[nr, nc] == GOAL


def bump_kind(env, grid: np.ndarray, action: int) -> str:
    r, c = position(grid, AGENT)
    nr, nc = r + MOVES[action][0], c + MOVES[action][1]
    if not (0 <= nr < env.height and 0 <= nc < env.width):
        return "off-grid"
    token = grid[nr, nc]
    if (nr, nc) in door_cells(env) and token in (WALL_V, DOOR):
        return "closed door" if token == env.door_token else "fixed wall"
    return f"wall {chr(token)}"


def test_moves_bumps_and_rewards_follow_the_rules(recorded):
    env, records = recorded
    kinds, moves_through_door_cells = set(), 0
    for rec in records:
        for i, action in enumerate(rec["actions"]):
            new, bumped, goal = expected_move(rec["before"][i], action)
            assert position(rec["final"][i], AGENT) == new
            assert rec["reward"][i] == pytest.approx(1.0 if goal else -0.01 if bumped else 0.0)
            assert rec["terminated"][i] == goal == rec["info"]["success"][i]
            if bumped:
                kinds.add(bump_kind(env, rec["before"][i], action))
            moves_through_door_cells += new in door_cells(env) and not bumped
    expected = ({"off-grid", "wall |", "wall -", "closed door"} if isinstance(env, FourRooms)
                else {"wall |", "wall -", "closed door", "fixed wall"})  # '|' includes pillars
    assert kinds == expected
    assert moves_through_door_cells > 0  # open doorways / slots can be walked through


def test_truncation_at_exactly_max_steps(recorded):
    env, records = recorded
    length = np.zeros(env.num_envs, dtype=int)
    truncations = 0
    for rec in records:
        length += 1
        assert not (rec["terminated"] & rec["truncated"]).any()
        np.testing.assert_array_equal(rec["truncated"], (length == env.max_steps) & ~rec["terminated"])
        done = rec["terminated"] | rec["truncated"]
        np.testing.assert_array_equal(rec["info"]["episode_length"][done], length[done])
        truncations += rec["truncated"].sum()
        length[done] = 0
    assert truncations > 0


def test_start_marker_appears_only_after_leaving(recorded):
    env, records = recorded
    seen = 0
    for rec in records:
        for i in range(env.num_envs):
            grid, start = rec["final"][i], rec["starts"][i]
            marker = position(grid, START)
            if position(grid, AGENT) == start:
                assert marker is None
            elif grid[start] != env.door_token:  # a door may be drawn over the start cell
                assert marker == start
                seen += 1
    assert seen > 0


def test_doors_stay_on_door_cells_and_off_agent_and_goal(recorded):
    env, records = recorded
    changed = 0
    for rec in records:
        agent, goal, doors = rec["agent"], rec["goal"], rec["doors"]
        assert (doors != agent[:, None]).all() and (doors != goal[:, None]).all()
        for i in range(env.num_envs):
            before, after = rec["before"][i], rec["final"][i]
            diff = {tuple(x) for x in np.argwhere(before != after)}
            markers = {position(before, AGENT), position(after, AGENT), rec["starts"][i]}
            assert diff <= door_cells(env) | markers
            closed = sum(after[cell] == env.door_token for cell in door_cells(env))
            if isinstance(env, FourRooms):
                assert closed == 1  # exactly one closed doorway at every step
            else:
                assert (after == DOOR).sum() == 5
            changed += rec["info"]["doors_changed"][i]
            if not rec["info"]["doors_changed"][i]:
                assert {c for c in diff if after[c] in OBSTACLES or before[c] in OBSTACLES} == set()
    assert changed > 0


def test_fixed_walls_never_move_within_an_episode():
    env, records = rollout(Maze, steps=60, num_envs=32, p_change=0.5)
    fixed = [set(map(tuple, np.argwhere(records[0]["before"][i] == WALL_V))) for i in range(32)]
    for rec in records:
        for i in range(32):
            now = set(map(tuple, np.argwhere(rec["final"][i] == WALL_V)))
            assert now == fixed[i]
            if rec["terminated"][i] or rec["truncated"][i]:
                fixed[i] = set(map(tuple, np.argwhere(rec["obs"][i] == WALL_V)))


# -- maze walls at reset -------------------------------------------------------------------------

def test_maze_places_ten_fixed_walls_and_keeps_a_path():
    env = Maze(1024, seed=0)
    env.reset()
    counts = env.fixed_wall_counts()
    assert counts.max() == 10 and (counts == 10).float().mean() > 0.99, counts.bincount()
    lengths = shortest_path_lengths(env.obstacles(doors=False), env.agent, env.goal)
    assert (lengths >= 0).all()
    assert ((env.terrain[:, env.door_cells] == DOOR).sum(1) == 5).all()


def test_maze_walls_shortcut_equals_wall_by_wall_process():
    """The one-BFS shortcut in `Maze._place_fixed_walls` claims to give what the wall-by-wall
    process gives with the same first tries whenever all of them keep a path."""
    env = Maze(1, seed=5)
    episodes = env._draw_episodes(256)  # just for starts and goals
    start, goal = episodes["start"], episodes["goal"]
    terrain = env.base.repeat(256, 1)
    terrain.scatter_(1, goal[:, None], GOAL).scatter_(1, start[:, None], START)
    first = env.door_cells[env._choose(env._door_options(terrain, start), 10)]
    shortcut = terrain.clone()
    env._place_fixed_walls(shortcut, start, goal)  # draws its own first tries
    with_all = terrain.scatter(1, first, WALL_V)
    fast = env._goal_reachable(with_all, start, goal)
    one_by_one = env._walls_one_by_one(terrain.clone(), start, goal, first)
    assert fast.float().mean() > 0.9
    assert torch.equal(one_by_one[fast], with_all[fast])
    assert env._goal_reachable(one_by_one, start, goal).all()
    assert env._goal_reachable(shortcut, start, goal).all()


def test_maze_with_many_fixed_walls_skips_walls_but_keeps_a_path():
    env = Maze(128, seed=1, fixed_walls=30, closed_doors=5)
    env.reset()
    counts = env.fixed_wall_counts()
    assert counts.min() < 30 and counts.max() <= 30
    assert (shortest_path_lengths(env.obstacles(doors=False), env.agent, env.goal) >= 0).all()


# -- door redraw probabilities -------------------------------------------------------------------

def within_5_sigma(observed: float, expected: float, variance: float) -> bool:
    return abs(observed - expected) <= 5 * variance**0.5


def test_fourrooms_redraw_rate_matches_p():
    """A redraw picks uniformly among the n allowed doorways, the old one included, so the door
    changes with probability p (1 - 1/n), n = 4 minus the goal's and the agent's doorways."""
    p, env = 0.05, FourRooms(1000, seed=2)
    env.reset()
    doorways, gen = env.door_cells, torch.Generator().manual_seed(0)
    observed = expected = variance = 0.0
    for _ in range(100):
        _, _, terminated, truncated, info = env.step(torch.randint(4, (1000,), generator=gen))
        live = ~(terminated | truncated)
        n = 4 - torch.isin(env.goal, doorways).long() - torch.isin(env.agent, doorways).long()
        q = (p * (1 - 1 / n))[live]
        observed += float(info["doors_changed"][live].sum())
        expected += float(q.sum())
        variance += float((q * (1 - q)).sum())
    assert within_5_sigma(observed, expected, variance)


@pytest.mark.parametrize("door_redraw", ["joint", "independent"])
def test_maze_redraw_rates(door_redraw):
    """joint: all 5 doors move together with probability p per step; independent: each door
    moves alone with probability p (landing on its own cell with probability 1/n, n >= 30)."""
    p, b, steps = 0.05, 500, 100
    env = Maze(b, seed=4, door_redraw=door_redraw)
    env.reset()
    moved, gen = [], torch.Generator().manual_seed(0)
    for _ in range(steps):
        before = env.doors.clone()
        _, _, terminated, truncated, info = env.step(torch.randint(4, (b,), generator=gen))
        live = ~(terminated | truncated)
        after = env.doors
        gone = (before[:, :, None] != after[:, None, :]).all(2).sum(1)  # old doors no longer closed
        moved.append(gone[live])
        assert torch.equal(info["doors_changed"][live], gone[live] > 0)
    moved = torch.cat(moved)
    n = len(moved)
    if door_redraw == "joint":
        rate = float((moved > 0).float().mean())
        assert within_5_sigma(rate * n, p * n, p * (1 - p) * n)
        assert float((moved[moved > 0] >= 3).float().mean()) > 0.9
    else:
        per_door = float(moved.sum()) / (5 * n)
        low, high = p * (1 - 1 / 30), p
        sigma = (p * (1 - p) / (5 * n)) ** 0.5
        assert low - 5 * sigma <= per_door <= high + 5 * sigma
        assert float((moved[moved > 0] == 1).float().mean()) > 0.8


# -- reset observation quirk ---------------------------------------------------------------------

@pytest.mark.parametrize("cls", ENV_CLASSES)
def test_hidden_doors_are_enforced_at_t0_and_drawn_on_request(cls):
    env = cls(512, seed=6)
    obs = env.reset()
    obstacles = env.obstacles().view(512, -1)
    hidden = obstacles & ~torch.isin(obs, torch.tensor(OBSTACLES, dtype=torch.uint8))
    assert (hidden.sum(1) == (1 if cls is FourRooms else 15)).float().mean() > 0.99
    # walk into a hidden closed door where one is next to the agent: a bump, no move
    actions = torch.zeros(512, dtype=torch.long)
    into_hidden = torch.zeros(512, dtype=torch.bool)
    for a in range(4):
        target = env.neighbours[env.agent, a]
        hits = hidden.gather(1, target[:, None])[:, 0] & ~into_hidden
        actions[hits], into_hidden[hits] = a, True
    assert into_hidden.sum() > 0
    agent = env.agent.clone()
    _, reward, *_ = env.step(actions)
    assert (reward[into_hidden] == -0.01).all() and torch.equal(env.agent[into_hidden], agent[into_hidden])

    shown = cls(64, seed=6, draw_doors_at_reset=True)
    obs = shown.reset()
    expected = shown.terrain.clone()
    expected.scatter_(1, shown.agent[:, None], AGENT)
    assert torch.equal(obs, expected)
    assert ((obs[:, shown.door_cells] == shown.door_token).sum(1) == shown.closed_doors).all()


# -- autoreset, final_obs and episode statistics -------------------------------------------------

@pytest.mark.parametrize("cls", ENV_CLASSES)
def test_same_step_autoreset_and_episode_statistics(cls):
    b = 32
    env = cls(b, seed=7, max_steps=12)
    env.reset()
    ret, length, ends = torch.zeros(b), torch.zeros(b, dtype=torch.long), 0
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        obs, reward, terminated, truncated, info = env.step(torch.randint(4, (b,), generator=gen))
        ret += reward
        length += 1
        done = terminated | truncated
        assert torch.equal(info["final_obs"][~done], obs[~done])
        assert torch.allclose(info["episode_return"][done], ret[done])
        assert torch.equal(info["episode_length"][done], length[done])
        assert info["episode_return"].dtype == torch.float32 and info["episode_length"].dtype == torch.long
        for i in done.nonzero()[:, 0]:
            first, last = grids(env, obs[i])[0], grids(env, info["final_obs"][i])[0]
            assert (first == AGENT).sum() == 1 and (first == GOAL).sum() == 1
            assert (first == env.map.numpy()).sum() == env.seq_len - 2  # no doors, no `<`
            if terminated[i]:
                assert not (last == GOAL).any()  # the agent stands on the goal
        assert (env.elapsed[done] == 0).all() and (env.returns[done] == 0).all()
        assert torch.equal(env.elapsed, torch.where(done, 0, length))
        ret[done], length[done] = 0, 0
        ends += int(done.sum())
    assert ends > b


# -- determinism and independence ----------------------------------------------------------------

def trajectory(env, actions, seed=None):
    out = [env.reset(seed=seed)]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        out += [obs, reward, terminated, truncated, info["final_obs"], info["doors_changed"]]
    return out


@pytest.mark.parametrize("cls", ENV_CLASSES)
def test_same_seed_same_trajectory_different_seed_differs(cls):
    actions = torch.randint(4, (100, 16), generator=torch.Generator().manual_seed(0))
    a = trajectory(cls(16, seed=1, p_change=0.2), actions)
    b = trajectory(cls(16, seed=1, p_change=0.2), actions)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    reused = cls(16, seed=99, p_change=0.2)
    trajectory(reused, actions[:7])
    assert all(torch.equal(x, y) for x, y in zip(a, trajectory(reused, actions, seed=1)))
    c = trajectory(cls(16, seed=2, p_change=0.2), actions)
    assert not torch.equal(a[0], c[0])


ENV_KINDS = [(FourRooms, {}), (Maze, {}), (Maze, {"door_redraw": "independent"})]
KIND_IDS = ["fourrooms", "maze", "maze-independent"]


@pytest.mark.parametrize("cls, kwargs", ENV_KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("saved_at", [31, 32, 50])  # just before, at and after a window's end
def test_state_dict_continues_exactly(cls, kwargs, saved_at):
    """A restored env continues with the same future, wherever in a window (`WINDOW` = 32) it
    was saved: the queue pointer, the count taken and the window's door moves are state."""
    actions = torch.randint(4, (120, 8), generator=torch.Generator().manual_seed(1))
    env = cls(8, seed=3, p_change=0.2, max_steps=9, **kwargs)
    trajectory(env, actions[:saved_at], seed=3)
    copy = cls(8, seed=0, p_change=0.2, max_steps=9, **kwargs)
    copy.load_state_dict(env.state_dict())
    rest_a = [env.step(a) for a in actions[saved_at:]]
    rest_b = [copy.step(a) for a in actions[saved_at:]]
    for x, y in zip(rest_a, rest_b):
        assert all(torch.equal(u, v) for u, v in zip(x[:4], y[:4]))
        assert all(torch.equal(x[4][key], y[4][key]) for key in x[4])
    assert same_state(env.state_dict(), copy.state_dict())


def same_state(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[key], b[key]) for key in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_state_dict_from_before_the_windows_loads():
    """A checkpoint written before the episode ring (a queue of just its unused episodes, no
    window state) still loads, and its queued episodes come first."""
    env = Maze(4, seed=0)
    env.reset()
    state = env.state_dict()
    old_queue = {key: value[:6] for key, value in state["queue"].items()}
    copy = Maze(4, seed=1)
    copy.load_state_dict({"state": state["state"], "queue": old_queue, "generator": state["generator"]})
    first = copy._next_episodes(torch.ones(4, dtype=torch.bool))
    assert all(torch.equal(first[key], old_queue[key][:4]) for key in old_queue)
    copy.step(torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("cls", ENV_CLASSES)
def test_an_env_does_not_see_the_other_envs_actions(cls):
    """Envs of a batch share one random stream but no state: changing env 0's actions leaves
    every other env's trajectory unchanged, at least until env 0's episode ends (from then on
    the envs may take the pre-drawn next episodes in a different order)."""
    b = 16
    gen = torch.Generator().manual_seed(2)
    actions = torch.randint(4, (80, b), generator=gen)
    other = actions.clone()
    other[:, 0] = torch.randint(4, (80,), generator=gen)
    envs = cls(b, seed=8, p_change=0.3), cls(b, seed=8, p_change=0.3)
    for env in envs:
        env.reset()
    compared = 0
    for a, a2 in zip(actions, other):
        x, y = envs[0].step(a), envs[1].step(a2)
        for u, v in zip(x[:4], y[:4]):
            assert torch.equal(u[1:], v[1:])
        compared += 1
        if x[2][0] or x[3][0] or y[2][0] or y[3][0]:
            break
    assert compared > 3


# -- host reads (GPU syncs) -----------------------------------------------------------------------

def test_the_host_read_detector_sees_syncs():
    x = torch.arange(4)
    for read in (lambda: int(x[0]), lambda: bool(x.any()), lambda: x.nonzero(), lambda: x[x > 1],
                 lambda: x.unique(), lambda: x.to("cpu", copy=True).tolist(), lambda: x.masked_select(x > 1)):
        with HostReads() as mode:
            read()
        assert mode.reads, read
    with HostReads() as mode:
        torch.where(x > 1, x, 0).cumsum(0).index_select(0, x).sort()
    assert not mode.reads


@pytest.mark.parametrize("cls, kwargs", ENV_KINDS, ids=KIND_IDS)
def test_step_reads_the_device_only_at_window_ends(cls, kwargs, monkeypatch):
    """With check=False a step reads nothing from the device, except the step that ends a
    window (every `WINDOW`-th since the reset): exactly one read, plus those inside the one
    episode draw that refills the queue (none in four-rooms, the BFS's in the maze). Short
    episodes, so that the queue needs refilling in every window."""
    b, window = 32, cls.WINDOW
    env = cls(b, seed=0, p_change=0.3, max_steps=10, **kwargs)
    env.reset()
    draws_at = []

    def recorded_draw(n, draw=env._draw_episodes):
        draws_at.append(t)
        mode.phase = "draw"
        try:
            return draw(n)
        finally:
            mode.phase = "step"

    monkeypatch.setattr(env, "_draw_episodes", recorded_draw)
    actions = torch.randint(4, (3 * window, b), generator=torch.Generator().manual_seed(0))
    for t, a in enumerate(actions, start=1):
        with HostReads() as mode:
            env.step(a, check=False)
        in_step = [op for phase, op in mode.reads if phase == "step"]
        in_draw = [op for phase, op in mode.reads if phase == "draw"]
        assert in_step == ([] if t % window else ["_to_copy"]), (t, mode.reads)
        assert bool(in_draw) == (cls is Maze and t % window == 0), (t, mode.reads)
    assert draws_at == [window, 2 * window, 3 * window]

    with HostReads() as mode:  # the value check: one more read per step
        env.step(actions[0])
    assert [op for _, op in mode.reads] == ["_to_copy"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls, kwargs", ENV_KINDS, ids=KIND_IDS)
def test_step_does_not_synchronize_on_cuda(cls, kwargs):
    """The same on a GPU, with CUDA's own detector: no sync in the steps of a window."""
    env = cls(256, device="cuda", seed=0, p_change=0.3, max_steps=10, **kwargs)
    env.reset()
    actions = torch.randint(4, (cls.WINDOW - 1, 256), device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for a in actions:
            env.step(a, check=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("num_envs, max_steps", [(1, 1), (5, 1), (5, 7)])
def test_episodes_come_from_the_queue_once_each_in_draw_order(num_envs, max_steps, monkeypatch):
    """Every episode drawn is started once, first drawn first started, also when every env
    finishes at every step (max_steps=1: the most the queue can be asked for)."""
    env = Maze(num_envs, seed=2, max_steps=max_steps, p_change=0.3)
    drawn = []

    def recorded_draw(n, draw=env._draw_episodes):
        episodes = draw(n)
        drawn.append({key: value.clone() for key, value in episodes.items()})
        return episodes

    monkeypatch.setattr(env, "_draw_episodes", recorded_draw)
    env.reset()
    started = [(env.start.clone(), env.goal.clone(), env.terrain.clone())]
    for a in torch.randint(4, (4 * env.WINDOW, num_envs), generator=torch.Generator().manual_seed(3)):
        _, _, terminated, truncated, _ = env.step(a)
        done = terminated | truncated
        started.append((env.start[done], env.goal[done], env.terrain[done]))
    if max_steps == 1:
        assert sum(len(start) for start, _, _ in started) == (4 * env.WINDOW + 1) * num_envs
    drawn_in_order = [torch.cat([d[key] for d in drawn]) for key in ("start", "goal", "terrain")]
    for expected, got in zip(drawn_in_order, (torch.cat(x) for x in zip(*started))):
        assert torch.equal(got, expected[:len(got)])


# -- inputs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("actions, message", [
    (torch.zeros(3, dtype=torch.long), "shape"),
    (torch.zeros(4, 1, dtype=torch.long), "shape"),
    (torch.zeros(4), "integers"),
    (torch.zeros(4, dtype=torch.bool), "integers"),
    (torch.tensor([0, 1, 2, 4]), r"0\.\.3"),
    (torch.tensor([0, -1, 2, 3]), r"0\.\.3"),
    ([0, 1, 2.5, 3], "integers"),
])
def test_bad_actions_raise(actions, message):
    env = Maze(4, seed=0)
    env.reset()
    with pytest.raises(ValueError, match=message) as error:
        env.step(actions)
    assert "\n" not in str(error.value)  # one line


def test_check_false_skips_only_the_value_check():
    env = Maze(4, seed=0)
    env.reset()
    with pytest.raises(ValueError, match=r"^actions must be in 0\.\.3 \(N, E, S, W\), got values in 0\.\.4$"):
        env.step(torch.tensor([0, 1, 2, 4]), check=True)
    with pytest.raises(ValueError, match="shape"):
        env.step(torch.zeros(3, dtype=torch.long), check=False)
    with pytest.raises(ValueError, match="integers"):
        env.step(torch.zeros(4), check=False)
    obs, *_ = env.step(torch.tensor([0, 1, 2, 3], dtype=torch.int32), check=False)
    assert obs.shape == (4, 143)


def test_actions_of_any_integer_kind_are_accepted():
    env = FourRooms(4, seed=0)
    env.reset()
    for actions in ([0, 1, 2, 3], np.array([3, 2, 1, 0], dtype=np.int32),
                    torch.tensor([1, 1, 1, 1], dtype=torch.uint8),
                    torch.tensor([2, 2, 2, 2], dtype=torch.int16)):
        obs, *_ = env.step(actions)
        assert obs.shape == (4, 121)


@pytest.mark.parametrize("cls, kwargs, message", [
    (FourRooms, dict(num_envs=0), "num_envs"),
    (FourRooms, dict(p_change=1.5), "p_change"),
    (FourRooms, dict(p_change=-0.1), "p_change"),
    (FourRooms, dict(max_steps=0), "max_steps"),
    (FourRooms, dict(seed=-1), "seed"),
    (FourRooms, dict(draw_doors_at_reset="yes"), "draw_doors_at_reset"),
    (Maze, dict(door_redraw="both"), "door_redraw"),
    (Maze, dict(fixed_walls=-1), "fixed_walls"),
    (Maze, dict(fixed_walls=40, closed_doors=8), "<= 47"),
])
def test_bad_constructor_arguments_raise(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_step_before_reset_raises():
    with pytest.raises(RuntimeError, match="reset"):
        FourRooms(2).step([0, 0])


def test_make_env():
    env = make_env("maze", 3, seed=0, door_redraw="independent")
    assert isinstance(env, Maze) and env.num_envs == 3 and env.door_redraw == "independent"
    with pytest.raises(ValueError, match="fourrooms, maze"):
        make_env("minigrid", 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", ENV_CLASSES)
def test_runs_on_cuda(cls):
    env = cls(256, device="cuda", seed=0)
    obs = env.reset()
    successes = 0
    for _ in range(100):
        obs, reward, terminated, truncated, info = env.step(oracle_actions(env))
        successes += int(terminated.sum())
    assert obs.device.type == "cuda" and info["final_obs"].dtype == torch.uint8
    assert successes > 256


@pytest.mark.parametrize("cls, kwargs", ENV_KINDS, ids=KIND_IDS)
def test_a_new_p_change_holds_from_the_next_step_mid_window(cls, kwargs):
    """Door moves are drawn a window ahead; the play widget's slider must not wait for it."""
    env = cls(16, seed=0, p_change=0.0, **kwargs)
    env.reset()
    for _ in range(5):  # into the window
        assert not env.step(torch.zeros(16, dtype=torch.long))[4]["doors_changed"].any()
    env.p_change = 1.0
    changed = torch.zeros(16, dtype=torch.bool)
    for _ in range(3):
        changed |= env.step(torch.zeros(16, dtype=torch.long))[4]["doors_changed"]
    assert changed.float().mean() > 0.5  # a redraw may land on the same cells now and then
    env.p_change = 0.0
    for _ in range(5):
        assert not env.step(torch.zeros(16, dtype=torch.long))[4]["doors_changed"].any()
    with pytest.raises(ValueError, match=r"p_change must be a probability in \[0, 1\], got 1.5"):
        env.p_change = 1.5
