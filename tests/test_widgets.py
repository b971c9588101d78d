"""PlayWidget driven without a browser: button clicks, slider changes and agent steps."""
import pytest
import torch

from hrm_agent.envs import oracle_actions
from hrm_agent.envs.core import STEP_PENALTY
from hrm_agent.widgets import PlayWidget

PNG = b"\x89PNG\r\n\x1a\n"


def bump_action(w: PlayWidget) -> int:
    """An action that runs into a wall or the grid's edge from the agent's current cell."""
    blocked = w.env.obstacles()[0].flatten()
    cell = int(w.env.agent[0])
    for a in range(4):
        target = int(w.env.neighbours[cell, a])
        if target == cell or blocked[target]:
            return a
    pytest.skip("no wall next to the agent")


def free_action(w: PlayWidget) -> int:
    blocked = w.env.obstacles()[0].flatten()
    cell = int(w.env.agent[0])
    for a in range(4):
        target = int(w.env.neighbours[cell, a])
        if target != cell and not blocked[target] and target != int(w.env.goal[0]):
            return a
    pytest.skip("the agent is boxed in")


def walk_to_wall(w: PlayWidget) -> None:
    """Walk west until the agent bumps, so a wall is next to it."""
    for _ in range(w.env.width):
        before = w.agent_position
        w.move("W")
        if w.agent_position == before or w.done:
            return


@pytest.mark.parametrize("env", ["fourrooms", "maze"])
def test_buttons_move_the_agent(env):
    w = PlayWidget(env, seed=0, p_change=0.0)
    assert w.step_count == 0 and not w.done and w.image_bytes.startswith(PNG)
    assert w.status.value.startswith("step 0 ·")
    a = free_action(w)
    status, image, pos = w.status.value, w.image_bytes, w.agent_position
    w.buttons["NESW"[a]].click()
    assert w.step_count == 1 and w.status.value.startswith("step 1 ·") and w.status.value != status
    assert w.agent_position != pos and w.image_bytes != image
    assert w.last_reward == 0.0


def test_bump_costs_penalty_and_keeps_position():
    w = PlayWidget("fourrooms", seed=0, p_change=0.0)
    walk_to_wall(w)
    steps, pos = w.step_count, w.agent_position
    w.buttons["NESW"[bump_action(w)]].click()
    assert w.agent_position == pos and w.step_count == steps + 1
    assert w.last_reward == pytest.approx(STEP_PENALTY) and "reward -0.01" in w.status.value


def test_reset_button_restores_step_zero_and_same_episode():
    w = PlayWidget("fourrooms", seed=3, p_change=0.0)
    start, image = w.agent_position, w.image_bytes
    for a in "NEES":
        w.move(a)
    w.reset_button.click()
    assert w.step_count == 0 and w.status.value.startswith("step 0 ·") and w.episode_return == 0.0
    assert w.agent_position == start and w.image_bytes == image  # same seed, same episode
    w.reset(seed=4)
    assert w.seed_box.value == 4 and w.step_count == 0


def test_seed_box_and_env_dropdown_restart():
    w = PlayWidget("fourrooms", seed=0)
    image = w.image_bytes
    w.seed_box.value = 1
    assert w.seed == 1 and w.image_bytes != image
    w.env_box.value = "maze"
    assert w.env.name == "maze" and w.env.height * w.env.width == 143 and w.step_count == 0


def test_p_change_slider_updates_running_env():
    w = PlayWidget("maze", seed=0, p_change=0.0)
    env = w.env
    w.p_slider.value = 1.0
    assert w.env is env and env.p_change == 1.0  # same env, episode kept
    doors = env.doors.clone()
    changed = False
    for _ in range(6):
        w.move(free_action(w) if not w.done else 0)
        changed |= not torch.equal(env.doors, doors)
    assert changed


@pytest.mark.parametrize("action", [4, -1, "x", 1.5, None, True])
def test_invalid_action_raises(action):
    w = PlayWidget()
    with pytest.raises(ValueError, match="invalid action"):
        w.move(action)
    assert w.step_count == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown env 'lava'.*fourrooms, maze"):
        PlayWidget("lava")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PlayWidget(checkpoint="pretrained/nope.pt")
    with pytest.raises(ValueError, match="p_change"):
        PlayWidget(p_change=2.0)
    with pytest.raises(RuntimeError, match="no checkpoint"):
        PlayWidget().agent_step()


def test_finished_episode_blocks_moves_until_reset():
    """Design choice: after the goal (or the step limit) the last frame stays; moves are no-ops."""
    w = PlayWidget("fourrooms", seed=0, p_change=0.0)
    for _ in range(100):
        if w.done:
            break
        w.move(int(oracle_actions(w.env)[0]))
    assert w.done and w.last_reward == 1.0 and "terminated" in w.status.value
    steps, image, status = w.step_count, w.image_bytes, w.status.value
    w.buttons["N"].click()
    assert not w.move(0) and w.step_count == steps and w.image_bytes == image and w.status.value == status
    w.reset()
    assert not w.done and w.step_count == 0

    w.env.max_steps = 2  # a plain attribute as well
    w.move("N"), w.move("S")
    assert w.done and "truncated" in w.status.value and not w.move("E")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from hrm_agent.trainer import Trainer
    from tests.conftest import tiny_config

    out = tmp_path_factory.mktemp("ckpt") / "run"
    Trainer(tiny_config("train.total_steps=2", "train.val_episodes=1"), out).train(progress=False)
    return out / "checkpoint.pt"


def test_agent_mode_steps_and_shows_q_values(checkpoint):
    w = PlayWidget(seed=0, checkpoint=checkpoint)
    assert w.env_name == "fourrooms" and w.env_box.disabled and w.mode.value == "agent"
    assert w.buttons["N"].disabled and not w.agent_button.disabled
    w.agent_button.click()
    assert w.step_count == 1 and len(w.q_values) == 4
    assert all(f"{n} " in w.q_html.value for n in "NESW") and "<b>" in w.q_html.value
    assert bytes(w.plot.value).startswith(PNG)
    w.carry_box.value = not w.carry_box.value  # Reset Z <-> Carry Z
    assert w.agent_step() in range(4) and w.agent.carry_z == w.carry_box.value
    w.mode.value = "human"
    assert not w.buttons["N"].disabled and w.agent_button.disabled
    with pytest.raises(ValueError, match="trained on 'fourrooms', not 'maze'"):
        PlayWidget("maze", checkpoint=str(checkpoint))
    assert PlayWidget(checkpoint="").model is None  # "" means no checkpoint (notebook parameter)
