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
