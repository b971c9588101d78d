"""`bench train`: the traffic count behind its roofline figures, and its report on a tiny profile."""
import pytest
import torch

from hrm_agent.bench.train import _Traffic, mode_overrides, run


def test_traffic_counts_reads_and_writes_of_each_kernel_and_nothing_for_views():
    a, b = torch.ones(100), torch.ones(100)
    with _Traffic() as traffic:
        a.view(10, 10).t()  # views move no data
        assert traffic.bytes == 0
        a + b  # reads a and b, writes the sum
        assert traffic.bytes == 3 * 100 * 4
        a.add_(b)  # in place: reads a and b, writes a
    assert traffic.bytes == 6 * 100 * 4


def test_traffic_counts_a_batched_matmul_as_its_one_kernel():
    x, w = torch.ones(4, 8, 16), torch.ones(16, 32)
    with _Traffic() as traffic:
        x @ w  # view, mm, then _unsafe_view back to (4, 8, 32): only the mm moves data
    assert traffic.bytes == (32 * 16 + 16 * 32 + 32 * 32) * 4


def test_bench_train_reports_rates_shares_and_the_roofline_per_mode(tmp_path):
    profile = tmp_path / "tiny.toml"
    profile.write_text('[env]\nnum_envs = 8\n[model]\nhidden_size = 32\nH_layers = 1\n'
                       'L_layers = 1\nsegments = 2\n[train]\nbatch_size = 16\nlearning_starts = 16\n')
    result = run(quick=True, profiles=[str(profile)], modes=["eager"])
    row = result[str(profile)]
    assert result["device"] == "cpu" and result["copy_GBps"] > 0
    assert row["bytes_per_step"] > 0 and "fast" not in row
    eager = row["eager"]
    assert eager["optimizer_steps_per_s"] > 0 and eager["env_steps_per_s"] > 0
    assert 0 < eager["share_outside_model"] < 1 and not eager["compiled"]
    assert eager["effective_GBps"] == pytest.approx(
        row["bytes_per_step"] * eager["optimizer_steps_per_s"] / 1e9, abs=0.05)
    with pytest.raises(ValueError, match="unknown bench train mode 'turbo'"):
        mode_overrides("turbo")
