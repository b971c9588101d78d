import pytest
import torch

from hrm_agent.replay import ReplayBuffer


def _batch(start, n):
    idx = torch.arange(start, start + n)
    return {"obs": idx[:, None].repeat(1, 3).to(torch.uint8), "reward": idx.float()}


def test_ring_buffer_overwrites_the_oldest_first():
    buf = ReplayBuffer(capacity=5)
    buf.add(**_batch(0, 3))
    buf.add(**_batch(3, 3))  # 0 is overwritten by 5
    assert len(buf) == 5
    assert sorted(buf.storage["reward"].tolist()) == [1, 2, 3, 4, 5]
    assert buf.storage["obs"].dtype == torch.uint8


def test_sampling_is_uniform_and_keeps_fields_aligned():
    buf = ReplayBuffer(capacity=64, seed=0)
    buf.add(**_batch(0, 64))
    sample = buf.sample(20_000)
    assert torch.equal(sample["obs"][:, 0].float(), sample["reward"])
    counts = torch.bincount(sample["reward"].long(), minlength=64).float()
    expected = 20_000 / 64  # chi-square-ish bound: each count within 5 sigma
    assert (counts - expected).abs().max() < 5 * expected**0.5


def test_same_seed_same_samples_and_state_roundtrip():
    a, b = ReplayBuffer(16, seed=3), ReplayBuffer(16, seed=3)
    for buf in (a, b):
        buf.add(**_batch(0, 10))
    assert torch.equal(a.sample(8)["reward"], b.sample(8)["reward"])
    c = ReplayBuffer(16, seed=99)
    c.load_state_dict(a.state_dict())
    assert len(c) == 10 and c.pos == a.pos
    assert torch.equal(c.sample(8)["reward"], a.sample(8)["reward"])


def test_bad_input_is_rejected_clearly():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0)
    buf = ReplayBuffer(8)
    with pytest.raises(RuntimeError, match="empty"):
        buf.sample(1)
    with pytest.raises(ValueError, match="batch size"):
        buf.add(obs=torch.zeros(2, 3), reward=torch.zeros(3))
    buf.add(**_batch(0, 2))
    with pytest.raises(ValueError, match="fields"):
        buf.add(obs=torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="capacity mismatch"):
        ReplayBuffer(9).load_state_dict(buf.state_dict())


def test_n_step_returns_follow_one_env_and_stop_at_the_episode_end():
    # 2 envs stepped 4 times; env 0 reaches the goal at its 3rd step, env 1 never ends.
    buf = ReplayBuffer(capacity=8, seed=0, stride=2)
    for t in range(4):
        buf.add(reward=torch.tensor([0.1 * (t + 1), 1.0]),
                terminated=torch.tensor([t == 2, False]), truncated=torch.tensor([False, False]),
                next_obs=torch.tensor([[10 * t], [10 * t + 1]]))
    gamma = 0.5
    batch = buf.sample_n_step(512, n_step=3, gamma=gamma)
    seen = set()
    for reward, discount, terminated, next_obs in zip(batch["reward"], batch["discount"],
                                                      batch["terminated"], batch["next_obs"][:, 0]):
        seen.add(int(next_obs))
        if int(next_obs) == 20:  # env 0 from t=0 (three steps) or t=1 (two), ending at the goal
            assert terminated
            expected = 0.1 + gamma * 0.2 + gamma**2 * 0.3 if discount == gamma**3 else 0.2 + gamma * 0.3
            assert discount in (gamma**3, gamma**2)
            assert torch.isclose(reward, torch.tensor(expected))
        elif int(next_obs) == 21:  # env 1 from t=0: three steps, then bootstrap
            assert torch.isclose(reward, torch.tensor(1 + gamma + gamma**2))
            assert not terminated and discount == gamma**3
        elif int(next_obs) == 31:  # env 1 from t=1
            assert torch.isclose(reward, torch.tensor(1 + gamma + gamma**2))
        else:
            raise AssertionError(f"unexpected next_obs {int(next_obs)}")
    # starts without a full 3-step lookahead in the buffer are never drawn
    assert seen == {20, 21, 31}


def test_n_step_sampling_respects_the_ring_buffer_order_once_full():
    buf = ReplayBuffer(capacity=6, seed=0, stride=2)
    for t in range(5):  # slots now hold t = 2, 3, 4 (t=4 overwrote the oldest)
        buf.add(reward=torch.tensor([float(t), float(t)]), terminated=torch.zeros(2, dtype=torch.bool),
                truncated=torch.zeros(2, dtype=torch.bool), next_obs=torch.tensor([[t], [t]]))
    batch = buf.sample_n_step(256, n_step=2, gamma=1.0)
    # starts are t=2 or t=3, each followed by the next step of the same env
    assert set(batch["reward"].tolist()) == {2.0 + 3.0, 3.0 + 4.0}
    assert set(batch["next_obs"][:, 0].tolist()) == {3, 4}
