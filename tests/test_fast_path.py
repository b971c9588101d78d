"""The fast training path (train.compile, train.cuda_graphs) computes what the eager one does,
and the hot loop never reads a tensor back to the host (on a GPU each read is a sync that
stalls the queue of launches, and a CUDA graph cannot contain one)."""
from __future__ import annotations

import collections
import dataclasses
import shutil
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hrm_agent.models.hrm import HRMConfig, HRMQNetwork
from hrm_agent.trainer import Trainer, fast_path
from tests.conftest import tiny_config

# aten ops that read a tensor's values on the host: item()/float()/bool() and data-dependent shapes
HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
              torch.ops.aten.masked_select.default}


class HostReads(TorchDispatchMode):
    """Counts host reads by the hrm_agent function that made them."""

    def __init__(self):
        super().__init__()
        self.by_function: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            frame = [f for f in traceback.extract_stack() if "/hrm_agent/" in f.filename][-1]
            self.by_function[f"{frame.filename.split('/hrm_agent/')[-1]}:{frame.name}"] += 1
        return func(*args, **(kwargs or {}))


def _compile_usable() -> bool:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        return False
    try:
        return torch.equal(torch.compile(lambda t: t * 2 + 1)(torch.ones(2)), torch.full((2,), 3.0))
    except Exception:  # noqa: BLE001  (no compiler, unsupported platform, ...)
        return False


needs_compile = pytest.mark.skipif(not _compile_usable(), reason="torch.compile is not usable here")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("profile, overrides", [
    ("paper-fourrooms", ["train.carry_z=true"]),
    ("paper-fourrooms", ["train.carry_z=false", "train.eps_mode='batch'"]),
    ("paper-maze", ["train.carry_z=true", "train.n_step=3"]),
])
def test_training_cycles_read_nothing_back_to_the_host(profile, overrides):
    trainer = Trainer(tiny_config(*overrides, "train.learning_starts=64", profile=profile))
    while len(trainer.replay) < 64:
        trainer.collect()
    trainer.learn()  # the first step allocates the optimizer state
    with HostReads() as reads:
        for _ in range(40):
            trainer.collect()
            trainer.learn()
    assert trainer.global_step > 40
    # only the env's queue of drawn episodes is refilled, every REFILL_EVERY steps, with a read
    refills = {name for name in reads.by_function if name.endswith(("_refill", "_draw_episodes",
                                                                      "_place_fixed_walls"))}
    assert set(reads.by_function) <= refills, dict(reads.by_function)


def test_auto_turns_the_fast_path_on_on_cuda_only_and_graphs_need_cuda():
    cfg = tiny_config().train
    assert fast_path(cfg, torch.device("cpu")) == (False, False)
    assert fast_path(cfg, torch.device("cuda")) == (True, True)
    off = dataclasses.replace(cfg, compile="off", cuda_graphs="off")
    assert fast_path(off, torch.device("cuda")) == (False, False)
    with pytest.raises(ValueError, match="cuda_graphs='on' needs a CUDA device"):
        fast_path(dataclasses.replace(cfg, cuda_graphs="on"), torch.device("cpu"))


@needs_compile
@pytest.mark.slow
def test_a_compiled_segment_gives_the_eager_q_and_gradients():
    """One segment, fp32: the 8-segment recurrence would amplify rounding ~5x per segment."""
    config = HRMConfig(seq_len=9, hidden_size=16, num_heads=2, H_layers=2, L_layers=2,
                       H_cycles=2, L_cycles=2, segments=1, dtype="float32")
    torch.manual_seed(0)
    eager, compiled = HRMQNetwork(config), HRMQNetwork(config)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    x = torch.randint(0, 131, (4, 9))
    carry = eager.carry_from_seed(eager.init_seed(4))
    c_e, q_e = eager.segment(carry, x)
    c_c, q_c = compiled.segment(carry, x)
    torch.testing.assert_close(q_c, q_e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c_c.z_H, c_e.z_H, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c_c.z_L, c_e.z_L, atol=1e-5, rtol=1e-5)
    q_e.square().sum().backward()
    q_c.square().sum().backward()
    for (name, p_e), p_c in zip(eager.named_parameters(), compiled.parameters()):
        if p_e.grad is not None or p_c.grad is not None:
            torch.testing.assert_close(p_c.grad, p_e.grad, atol=1e-5, rtol=1e-5, msg=name)


def _train(*overrides: str) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(tiny_config("train.total_steps=24", *overrides))
    trainer.train(progress=False)
    return trainer


def _assert_same_run(fast: Trainer, eager: Trainer, atol: float) -> None:
    """The same transitions (actions, rewards, observations exactly; z to rounding) and the same
    weights, to rounding."""
    n = len(eager.replay)
    assert len(fast.replay) == n and fast.global_step == eager.global_step
    for key, value in eager.replay.storage.items():
        if value.dtype.is_floating_point and key not in ("reward",):
            torch.testing.assert_close(fast.replay.storage[key][:n], value[:n], atol=atol, rtol=atol)
        else:
            assert torch.equal(fast.replay.storage[key][:n], value[:n]), key
    for (name, p_e), p_f in zip(eager.model.named_parameters(), fast.model.parameters()):
        torch.testing.assert_close(p_f, p_e, atol=atol, rtol=atol, msg=name)
    assert fast.last_val == pytest.approx(eager.last_val, nan_ok=True)


@needs_compile
@pytest.mark.slow
def test_a_short_compiled_run_is_the_eager_run():
    _assert_same_run(_train("train.compile='on'"), _train("train.compile='off'"), atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("compile", ["off", "on"])
def test_a_short_cuda_graphed_run_is_the_eager_run(compile):
    cuda = ["train.device='cuda'", "model.dtype='float32'"]
    eager = _train(*cuda, "train.compile='off'", "train.cuda_graphs='off'")
    graphed = _train(*cuda, f"train.compile='{compile}'", "train.cuda_graphs='on'")
    assert graphed.learn_minibatch.graph is not None and graphed.agent.forward.graph is not None
    _assert_same_run(graphed, eager, atol=1e-5)
