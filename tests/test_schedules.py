import pytest

from hrm_agent.schedules import linear_schedule, warmup_constant


def test_epsilon_is_linear_then_flat_at_the_paper_values():
    assert linear_schedule(1.0, 0.33, 300_000, 0) == 1.0
    assert linear_schedule(1.0, 0.33, 300_000, 150_000) == pytest.approx(0.665)
    assert linear_schedule(1.0, 0.33, 300_000, 300_000) == pytest.approx(0.33)
    assert linear_schedule(1.0, 0.33, 300_000, 10**7) == pytest.approx(0.33)
    # the paper notes: eps is still about 0.78 at 100K steps and 0.56 at 200K
    assert linear_schedule(1.0, 0.33, 300_000, 100_000) == pytest.approx(0.777, abs=1e-3)
    assert linear_schedule(1.0, 0.33, 300_000, 200_000) == pytest.approx(0.553, abs=1e-3)


def test_zero_duration_schedule_is_the_end_value():
    assert linear_schedule(1.0, 0.05, 0, 0) == 0.05


def test_lr_warms_up_linearly_from_zero_then_stays_constant():
    assert warmup_constant(1e-4, 10_000, 0) == 0.0
    assert warmup_constant(1e-4, 10_000, 5_000) == pytest.approx(5e-5)
    assert warmup_constant(1e-4, 10_000, 10_000) == pytest.approx(1e-4)
    assert warmup_constant(1e-4, 10_000, 123_456) == pytest.approx(1e-4)
    assert warmup_constant(1e-3, 0, 0) == 1e-3


@pytest.mark.parametrize("step", [0, 1, 137, 4_000, 9_999, 10_000, 250_000])
def test_a_float64_tensor_step_gives_exactly_the_python_values(step):
    """The trainer evaluates the schedules on a device tensor (no host sync); a run must not
    depend on which of the two computed them."""
    import torch

    t = torch.tensor(float(step), dtype=torch.float64)
    assert float(warmup_constant(1e-4, 10_000, t)) == warmup_constant(1e-4, 10_000, step)
    assert float(linear_schedule(1.0, 0.05, 4_000, t)) == linear_schedule(1.0, 0.05, 4_000, step)
