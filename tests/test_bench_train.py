"""`bench train`: the traffic count behind its roofline figures, and its report on a tiny profile."""
import pytest
import torch

from hrm_agent.bench import last_partial
from hrm_agent.bench import train as bench_train
from hrm_agent.bench.train import _ready, _Traffic, kernel_profile, mode_overrides, run
from hrm_agent.experiment import load_profile
from hrm_agent.graphs import CUDAGraphed


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


@pytest.fixture
def tiny_profile(tmp_path) -> str:
    """A profile file: the paper's structure, small enough to bench in seconds."""
    path = tmp_path / "tiny.toml"
    path.write_text('[env]\nnum_envs = 8\n[model]\nhidden_size = 32\nH_layers = 1\nL_layers = 1\n'
                    'segments = 2\n[train]\nbatch_size = 16\nlearning_starts = 16\n')
    return str(path)


@pytest.fixture
def trainer(tiny_profile):
    """An eager trainer of `tiny_profile` past its first learn step."""
    return _ready(load_profile(tiny_profile, ["train.compile='off'"]))


def test_bench_train_reports_rates_shares_and_the_roofline_per_mode(tiny_profile, capsys):
    result = run(quick=True, profiles=[tiny_profile], modes=["eager"])
    assert last_partial(capsys.readouterr().err) == result  # the last result so far is all of it
    row = result[tiny_profile]
    assert result["device"] == "cpu" and result["copy_GBps"] > 0
    assert row["bytes_per_step"] > 0 and "fast" not in row
    eager = row["eager"]
    assert eager["optimizer_steps_per_s"] > 0 and eager["env_steps_per_s"] > 0
    assert 0 < eager["share_outside_model"] < 1 and not eager["compiled"]
    assert eager["effective_GBps"] == pytest.approx(
        row["bytes_per_step"] * eager["optimizer_steps_per_s"] / 1e9, abs=0.05)
    kernels = eager["kernels"]
    times = [row["ms_per_step"] for row in kernels["top"]]
    assert kernels["ms_per_step"] > 0 and 0 < kernels["busy"] < 2
    assert times == sorted(times, reverse=True) and sum(times) <= kernels["ms_per_step"]
    assert "aten::mm" in [row["name"] for row in kernels["top"]]
    with pytest.raises(ValueError, match="unknown bench train mode 'turbo'"):
        mode_overrides("turbo")


def test_a_mode_that_raises_fails_its_check_and_the_other_modes_still_run(tiny_profile,
                                                                          monkeypatch):
    """A new kernel that fails (in the mode's check, or in its timing) costs the bench only
    that mode: the error is its check's, the modes after it are checked and timed."""
    references = []
    monkeypatch.setattr(bench_train, "check_run", lambda device, mode: references.append(mode) or mode)

    def check_mode(device, mode, eager):
        if mode == "fused":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return {"ok": True}

    def time_mode(name, mode, *args):
        if mode == "fast":
            raise ValueError("train.fused_swiglu needs a model with SwiGLU layers")
        return {"optimizer_steps_per_s": 1.0}

    monkeypatch.setattr(bench_train, "check_mode", check_mode)
    monkeypatch.setattr(bench_train, "time_mode", time_mode)
    result = run(quick=True, profiles=[tiny_profile], modes=["eager", "fused", "fast", "fused-blocks"])
    assert references == ["eager"]  # the eager CHECK run, once for all checked modes
    assert result["fused_check"] == {
        "ok": False, "error": "RuntimeError: CUDA error: an illegal memory access was encountered"}
    assert result["fast_path_check"] == {
        "ok": False, "error": "ValueError: train.fused_swiglu needs a model with SwiGLU layers"}
    assert result["fused-blocks_check"] == {"ok": True}
    assert sorted(result[tiny_profile]) == ["batch_size", "bytes_per_step", "eager", "fused-blocks",
                                            "num_envs"]
    monkeypatch.setattr(bench_train, "time_mode", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # eager is every other mode's reference
        run(quick=True, profiles=[tiny_profile], modes=["eager", "fast"])


def test_the_kernel_profile_counts_per_optimizer_step(trainer):
    kernels = kernel_profile(trainer, wall_ms_per_step=1e3, cycles=3, top=10_000)
    calls = {row["name"]: row["calls_per_step"] for row in kernels["top"]}
    # atan2 runs in AdamATan2 only, once per optimizer step and parameter it updates
    trained = sum(p.grad is not None for group in trainer.optimizer.param_groups
                  for p in group["params"])
    assert calls["aten::atan2"] == trained > 0
    assert not [name for name in calls if name.startswith("Optimizer.step")]  # ranges, not ops
    assert kernels["busy"] == pytest.approx(kernels["ms_per_step"] / 1e3, abs=1e-3)
    assert sum(row["share"] for row in kernels["top"]) == pytest.approx(1, abs=1e-3)
    assert kernels["kernels_per_step"] == pytest.approx(
        sum(row["calls_per_step"] for row in kernels["top"]), abs=0.5)


def test_a_graphed_trainer_is_profiled_on_the_functions_its_graphs_captured(trainer):
    graphed = trainer.learn_minibatch = CUDAGraphed(trainer.learn_minibatch)  # never called here
    kernels = kernel_profile(trainer, wall_ms_per_step=1e3, top=10_000)
    assert graphed.calls == 0 and trainer.learn_minibatch is graphed
    assert "aten::atan2" in [row["name"] for row in kernels["top"]]  # the learn step ran
