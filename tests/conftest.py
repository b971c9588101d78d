import os
import subprocess
import sys

import pytest
import torch

# Without a GPU, Triton's interpreter runs the fused blocks' kernel (tests/test_fused.py). Set
# before anything imports triton: torch.compile does, and triton.language's own jit functions
# are made interpretable only if the variable is set when they are defined.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from hrm_agent.experiment import load_profile  # noqa: E402

TINY = [
    "model.hidden_size=32", "model.num_heads=2", "model.H_layers=1", "model.L_layers=1",
    "model.H_cycles=1", "model.L_cycles=2", "model.segments=2",
    "env.num_envs=8", "train.batch_size=16", "train.buffer_capacity=4096",
    "train.learning_starts=16", "train.val_episodes=16", "train.device='cpu'",
    "train.lr=1e-3", "train.lr_warmup_steps=10", "train.eps_decay_steps=100",
    "train.log_interval=4", "train.val_interval=8", "train.checkpoint_interval=8",
]


def tiny_config(*overrides: str, profile: str = "paper-fourrooms"):
    """A model and run small enough to train for a few steps in a test."""
    return load_profile(profile, [*TINY, *overrides])


def hrm_twins(device: str, **config):
    """A small HRM (its config: seq_len 15, hidden 32, 2 heads, with `config`) and a copy of it
    with the same weights, for a variant to be compared with the original."""
    from hrm_agent.models.hrm import HRMConfig, HRMQNetwork

    torch.manual_seed(0)
    config = HRMConfig(**{"seq_len": 15, "hidden_size": 32, "num_heads": 2, **config})
    original, twin = HRMQNetwork(config).to(device), HRMQNetwork(config).to(device)
    twin.load_state_dict(original.state_dict())
    return original, twin


def segment_q_and_gradients(net, inputs: torch.Tensor) -> list[torch.Tensor]:
    """Q of one training segment (from the initial carry, z_H moved off H_init) and every
    parameter's gradient of a loss on it."""
    from hrm_agent.models.base import Carry

    carry = net.carry_from_seed(net.init_seed(inputs.shape[0]))
    _, q = net.segment(Carry(carry.z_H + 0.1, carry.z_L), inputs)
    q.square().sum().backward()
    return [q, *(p.grad for p in net.parameters() if p.grad is not None)]


def assert_segment_is_eager(device: str, use, **config) -> None:
    """Q and every gradient of a training segment of `hrm_twins` (`config`) are the original's
    in the twin that `use(twin)` gave kernels of ours to."""
    eager, model = hrm_twins(device, **config)
    use(model)
    inputs = torch.randint(0, 131, (2, 15), device=device)
    results = [segment_q_and_gradients(net, inputs) for net in (eager, model)]
    assert len(results[0]) == len(results[1]) > 10
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def compile_for_h100(script: str, cache_dir, *args: str) -> str:
    """What `script` prints, run in a fresh process without the interpreter (under it,
    triton.jit makes no compilable kernels), with its own Triton cache: Triton's compiler and
    ptxas build kernels for sm_90 without a GPU."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(cache_dir)
    proc = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
