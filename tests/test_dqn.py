import torch
from torch import nn

from hrm_agent.dqn import polyak_update, q_loss, td_target


def test_td_target_bootstraps_through_truncation_but_not_termination():
    reward = torch.tensor([1.0, -0.01, 0.0, 0.0])
    terminated = torch.tensor([True, False, False, False])  # env 2 is a truncation: not terminal
    q_next = torch.tensor([[5.0, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], [2.0, 0, 0, 0], [-1.0, -2, -3, -4]])
    y = td_target(reward, terminated, q_next, gamma=0.95)
    assert torch.allclose(y, torch.tensor([1.0, -0.01 + 0.95 * 0.4, 0.95 * 2.0, 0.95 * -1.0]))


def test_q_loss_uses_the_taken_action_only():
    q = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 10.0, 0.0]])
    loss = q_loss(q, torch.tensor([3, 2], dtype=torch.uint8), torch.tensor([3.0, 10.0]))
    assert loss.item() == 0.5  # ((4-3)^2 + 0) / 2


def test_polyak_moves_parameters_and_copies_buffers():
    torch.manual_seed(0)
    online, target = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        online.weight.fill_(1.0)
        target.weight.fill_(0.0)
        online.running_mean.fill_(7.0)
    polyak_update(target, online, decay=0.999)
    assert torch.allclose(target.weight, torch.full((3,), 0.001))
    assert torch.equal(target.running_mean, online.running_mean)
    for _ in range(20_000):  # converges to the online net (up to fp32 rounding of tiny steps)
        polyak_update(target, online, decay=0.999)
    assert torch.allclose(target.weight, online.weight, atol=1e-4)
