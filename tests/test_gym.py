"""The gymnasium interfaces: registered single envs and the same-step-autoreset vector env."""
from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import hrm_agent.envs  # noqa: F401  (registers the ids)
from hrm_agent.envs.gym import FourRoomsVectorEnv, MazeEnv, MazeVectorEnv
from hrm_agent.envs.render import render_ascii

IDS = {"hrm_agent/FourRooms-v0": (11, 11), "hrm_agent/Maze-v0": (11, 13)}


@pytest.mark.parametrize("env_id", IDS)
def test_check_env_passes_without_warnings(env_id):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gymnasium.make(env_id)
        check_env(env.unwrapped)
    assert env.observation_space.shape == (np.prod(IDS[env_id]),)
    assert env.observation_space.dtype == np.uint8 and env.action_space.n == 4


@pytest.mark.parametrize("env_id", IDS)
def test_the_env_truncates_itself_without_a_time_limit_wrapper(env_id):
    assert gymnasium.spec(env_id).max_episode_steps is None
    env = gymnasium.make(env_id)
    wrapper = env
    while isinstance(wrapper, gymnasium.Wrapper):
        assert not isinstance(wrapper, gymnasium.wrappers.TimeLimit)
        wrapper = wrapper.env
    env.reset(seed=0)
    env.action_space.seed(0)
    lengths = []
    for _ in range(5):
        steps, done = 0, False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            steps += 1
            done = terminated or truncated
        lengths.append((steps, truncated))
        env.reset()
    assert all(steps == 80 if truncated else steps <= 80 for steps, truncated in lengths)
    short = gymnasium.make(env_id, max_steps=3)
    short.reset(seed=0)
    results = [short.step(0)[2:4] for _ in range(3)]
    assert results[-1][1] or any(terminated for terminated, _ in results)


def test_reset_rejects_unknown_options():
    env = gymnasium.make("hrm_agent/Maze-v0")
    env.reset(options={})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"start": 3})


def test_render_modes():
    env = gymnasium.make("hrm_agent/FourRooms-v0", render_mode="ansi")
    obs, _ = env.reset(seed=1)
    assert env.render() == render_ascii(obs, (11, 11))
    env = gymnasium.make("hrm_agent/Maze-v0", render_mode="rgb_array")
    env.reset(seed=1)
    frame = env.render()
    assert frame.shape == (11 * 16, 13 * 16, 3) and frame.dtype == np.uint8
    with pytest.raises(ValueError, match="render_mode"):
        MazeEnv(render_mode="video")


def test_bad_action_raises():
    env = gymnasium.make("hrm_agent/FourRooms-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.unwrapped.step(7)


@pytest.mark.parametrize("env_id, cls", [("hrm_agent/FourRooms-v0", FourRoomsVectorEnv),
                                          ("hrm_agent/Maze-v0", MazeVectorEnv)])
def test_vector_env_same_step_autoreset(env_id, cls):
    envs = gymnasium.make_vec(env_id, num_envs=8, max_steps=10)
    assert isinstance(envs.unwrapped, cls)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    obs, info = envs.reset(seed=0)
    assert obs in envs.observation_space and info == {}
    envs.action_space.seed(0)
    finished = 0
    for _ in range(25):
        obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
        assert obs.dtype == np.uint8 and obs in envs.observation_space
        assert reward.dtype == np.float32 and terminated.dtype == truncated.dtype == np.bool_
        done = terminated | truncated
        np.testing.assert_array_equal(info["_final_obs"], done)
        for i in range(8):
            if done[i]:
                last = info["final_obs"][i]
                assert last.shape == obs[i].shape and (last == ord("@")).sum() == 1
                assert info["final_info"]["episode_length"][i] <= 10
                assert (obs[i] == ord("<")).sum() == 0  # already the next episode's first frame
            else:
                assert info["final_obs"][i] is None
        finished += done.sum()
    assert finished >= 8
