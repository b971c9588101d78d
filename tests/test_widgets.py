"""PlayWidget driven without a browser: keys, button clicks, slider changes, agent steps and
auto-play ticks."""
import html
import re

import pytest
import torch

from hrm_agent.envs import oracle_actions
from hrm_agent.envs.core import STEP_PENALTY
from hrm_agent.envs.render import LEGEND
from hrm_agent.widgets import PlayWidget, default_checkpoint, key_action

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
    w = PlayWidget(env, seed=0, p_change=0.0, checkpoint=None)
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
    with pytest.raises(RuntimeError, match="no agent loaded"):
        PlayWidget(checkpoint=None).agent_step()


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


def test_keys_map_to_moves():
    assert [key_action(k) for k in ("ArrowUp", "ArrowRight", "ArrowDown", "ArrowLeft")] == [0, 1, 2, 3]
    assert [key_action(k) for k in "wdsaWDSA"] == [0, 1, 2, 3] * 2
    assert key_action("q") is None and key_action("Enter") is None and key_action("") is None


def test_key_on_the_board_moves_the_agent_and_pauses_auto_play():
    w = PlayWidget("fourrooms", seed=0, p_change=0.0)
    a = free_action(w)
    pos = w.agent_position
    w.play.playing = True
    assert not w.on_key({"type": "keydown", "key": "x"}) and w.step_count == 0 and w.play.playing
    assert w.on_key({"type": "keydown", "key": ["ArrowUp", "ArrowRight", "ArrowDown", "ArrowLeft"][a]})
    assert w.step_count == 1 and w.agent_position != pos and not w.play.playing


def test_the_shipped_agent_is_the_default_and_follows_the_env():
    w = PlayWidget(seed=0)
    assert w.agent_name == default_checkpoint("fourrooms").parent.name and w.model.recurrent
    assert w.agent_box.layout.display is None and not w.env_box.disabled
    w.env_box.value = "maze"
    assert w.agent_name == default_checkpoint("maze").parent.name and w.env.name == "maze"
    assert w.agent_step() in range(4) and w.step_count == 1
    human = PlayWidget(checkpoint=None)
    assert human.model is None and human.agent_box.layout.display == "none"
    assert PlayWidget(checkpoint="").model is None  # "" too (an empty notebook parameter)


def test_legend_names_every_colour_of_the_env():
    w = PlayWidget("fourrooms", checkpoint=None)
    for env in ("fourrooms", "maze"):
        w.env_box.value = env
        labels = [html.unescape(x) for x in re.findall(r"> ([^<]+)</span>", w.legend.value)]
        assert labels == [label for label, _ in LEGEND[env]]
        assert w.legend.value.count("data:image/png;base64,") == len(LEGEND[env])


def test_agent_step_shows_q_bars_and_convergence_and_moves():
    w = PlayWidget(seed=0, checkpoint=default_checkpoint("fourrooms"))
    assert w.env_name == "fourrooms" and w.env_box.disabled  # an explicit agent fixes the env
    w.agent_button.click()
    assert w.step_count == 1 and len(w.q_values) == 4
    best = max(range(4), key=lambda a: w.q_values[a])
    widths = [float(x) for x in re.findall(r'class="hrm-q-bar" style="[^"]*width:([\d.]+)%', w.q_html.value)]
    assert len(widths) == 4 and max(widths) == pytest.approx(50.0)  # the largest |Q| spans half
    assert widths.index(max(widths)) == max(range(4), key=lambda a: abs(w.q_values[a]))
    assert f"bold\"><span style=\"width:32px\">{'↑→↓←'[best]}" in w.q_html.value
    assert bytes(w.plot.value).startswith(PNG) and w.plot.layout.display is None
    w.carry_box.value = not w.carry_box.value  # Reset Z <-> Carry Z
    assert w.agent_step() in range(4) and w.agent.carry_z == w.carry_box.value
    w.buttons["N"].click()  # a human may take over at any time
    assert w.step_count == 3
    with pytest.raises(ValueError, match="trained on 'fourrooms', not 'maze'"):
        PlayWidget("maze", checkpoint=str(default_checkpoint("fourrooms")))


def test_a_non_recurrent_agent_has_no_carry_z_or_convergence_plot():
    w = PlayWidget(seed=0)
    w.model.recurrent = False  # as the baselines (class attribute False)
    w._show_agent_controls()
    w.reset()
    assert w.carry_box.layout.display == "none"
    assert w.agent_step() in range(4) and not w.agent.carry_z
    assert w.plot.value == b"" and w.plot.layout.display == "none"


def test_auto_play_ticks_step_the_agent_and_pause_at_the_end():
    w = PlayWidget(seed=0, p_change=0.0)
    w.env.max_steps = 3
    w.speed.value = 5
    assert w.play.interval == 200
    w.play.playing = True
    for tick in range(1, 3):
        w.play.value = tick  # what the ▶ timer does in the browser
        assert w.step_count == tick and w.play.playing
        assert w.plot.layout.display == "none"  # no plot while playing
    w.play.value = 0  # ■ rewinds the counter: no step
    assert w.step_count == 2
    w.play.value = 1
    assert w.done and w.step_count == 3 and not w.play.playing  # the episode ended: paused
    assert bytes(w.plot.value).startswith(PNG)  # drawn once paused
    w.play.playing = True
    assert w.tick() is None and w.step_count == 3 and not w.play.playing
