"""The fast training path (train.compile, train.cuda_graphs) computes what the eager one does,
and the hot loop never reads a tensor back to the host (on a GPU each read is a sync that
stalls the queue of launches, and a CUDA graph cannot contain one)."""
from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch

from hrm_agent import trainer as trainer_module
from hrm_agent.bench.train import CHECK, check_fast_path, compare_runs
from hrm_agent.cli import main
from hrm_agent.experiment import load_profile
from hrm_agent.models.hrm import HRMConfig, HRMQNetwork, Seed
from hrm_agent.trainer import CHECKPOINT, Trainer, fast_path, load_agent
from tests.conftest import tiny_config
from tests.graph_replay import EmulatedCUDAGraphed
from tests.host_reads import HostReads


def _compile_usable() -> bool:
    if trainer_module.compile_unavailable(torch.device("cpu")):
        return False
    try:
        return torch.equal(torch.compile(lambda t: t * 2 + 1)(torch.ones(2)), torch.full((2,), 3.0))
    except Exception:  # noqa: BLE001  (no compiler, unsupported platform, ...)
        return False


needs_compile = pytest.mark.skipif(not _compile_usable(), reason="torch.compile is not usable here")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def compile_counter(monkeypatch):
    """Every HRM compiled while the test runs compiles with a CompileCounter backend (which runs
    the captured graph as is); the counter, afterwards dynamo afresh."""
    from torch._dynamo.testing import CompileCounter

    counter, compile = CompileCounter(), HRMQNetwork.compile
    monkeypatch.setattr(HRMQNetwork, "compile", lambda self, **kwargs: compile(self, backend=counter))
    yield counter
    torch._dynamo.reset()


@pytest.mark.parametrize("profile, overrides", [
    ("paper-fourrooms", ["train.carry_z=true"]),
    ("paper-fourrooms", ["train.carry_z=false", "train.eps_mode='batch'"]),
    ("paper-maze", ["train.carry_z=true", "train.n_step=3"]),
])
def test_training_cycles_read_the_device_only_at_the_envs_window_ends(profile, overrides, monkeypatch):
    """collect + learn read nothing back to the host; the env reads once per WINDOW steps
    (and, refilling its queue, inside its episode draw), which is all that is left."""
    trainer = Trainer(tiny_config(*overrides, "train.learning_starts=64", profile=profile))
    while len(trainer.replay) < 64:
        trainer.collect()
    trainer.learn()  # the first step allocates the optimizer state
    env = trainer.env
    window_ends = []

    def next_window(end=env._next_window):
        window_ends.append(env_steps)
        reads.phase = "window end"
        try:
            end()
        finally:
            reads.phase = "step"

    monkeypatch.setattr(env, "_next_window", next_window)
    with HostReads() as reads:
        for env_steps in range(1, 2 * env.WINDOW + 1):
            trainer.collect()
            trainer.learn()
    assert trainer.global_step > 2 * env.WINDOW
    assert len(window_ends) == 2
    assert reads.reads and {phase for phase, _ in reads.reads} == {"window end"}, reads.reads


def test_auto_turns_the_fast_path_on_on_cuda_only_and_graphs_need_cuda(monkeypatch):
    monkeypatch.setattr(trainer_module, "compile_unavailable", lambda device: None)
    cfg = tiny_config().train
    assert fast_path(cfg, torch.device("cpu")) == (False, False)
    assert fast_path(cfg, torch.device("cuda")) == (True, True)
    off = dataclasses.replace(cfg, compile="off", cuda_graphs="off")
    assert fast_path(off, torch.device("cuda")) == (False, False)
    with pytest.raises(ValueError, match="cuda_graphs='on' needs a CUDA device"):
        fast_path(dataclasses.replace(cfg, cuda_graphs="on"), torch.device("cpu"))


def test_without_a_compiler_a_compiled_run_trains_eagerly_and_says_so(tmp_path):
    """The CPU profiles and notebooks 03/05 ask for torch.compile; on a machine without a C++
    compiler (a slim image, Windows without MSVC) they must still run, not fail at the first
    step."""
    with torch._inductor.config.patch({"cpp.cxx": ("hrm-agent-no-such-compiler",)}):
        assert "no C++ compiler" in trainer_module.compile_unavailable(torch.device("cpu"))
        with pytest.warns(RuntimeWarning, match="train.compile is .on., but inductor finds no "
                                                "C\\+\\+ compiler .*: it is off"):
            trainer = Trainer(tiny_config("train.compile='on'", "train.total_steps=8"), tmp_path)
        assert not trainer.compiled
        trainer.train(progress=False)
        with pytest.warns(RuntimeWarning, match="compile=True asks for torch.compile, but"):
            model, config = load_agent(tmp_path / CHECKPOINT, compile=True)
        assert config.model.attn_backend == "auto"  # as stored: nothing compiled, nothing changed
        with torch.no_grad():
            model(trainer.obs, model.init_seed(trainer.env.num_envs))
    assert trainer.global_step == 8


def test_triton_needs_a_c_compiler_on_cuda(monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", "")
    assert "no C compiler" in trainer_module.compile_unavailable(torch.device("cuda"))
    monkeypatch.setenv("CC", sys.executable)  # any executable at an absolute path
    assert trainer_module.compile_unavailable(torch.device("cuda")) is None


@needs_compile
@pytest.mark.slow
@pytest.mark.parametrize("attn_backend", ["auto", "math"])
def test_a_compiled_segment_gives_the_eager_q_and_gradients(attn_backend):
    """One segment, fp32: the 8-segment recurrence would amplify rounding ~5x per segment.
    Compiled explicit-math attention stays explicit math (inductor would rewrite it to SDPA)."""
    config = HRMConfig(seq_len=9, hidden_size=16, num_heads=2, H_layers=2, L_layers=2,
                       H_cycles=2, L_cycles=2, segments=1, dtype="float32",
                       attn_backend=attn_backend)
    torch.manual_seed(0)
    eager, compiled = HRMQNetwork(config), HRMQNetwork(config)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    x = torch.randint(0, 131, (4, 9))
    carry = eager.carry_from_seed(eager.init_seed(4))
    c_e, q_e = eager.segment(carry, x)
    with torch.profiler.profile() as prof:
        c_c, q_c = compiled.segment(carry, x)
    sdpa = any("scaled_dot_product" in e.key for e in prof.key_averages())
    assert sdpa == (attn_backend != "math")
    torch.testing.assert_close(q_c, q_e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c_c.z_H, c_e.z_H, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c_c.z_L, c_e.z_L, atol=1e-5, rtol=1e-5)
    q_e.square().sum().backward()
    q_c.square().sum().backward()
    for (name, p_e), p_c in zip(eager.named_parameters(), compiled.parameters()):
        if p_e.grad is not None or p_c.grad is not None:
            torch.testing.assert_close(p_c.grad, p_e.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_a_compiled_segment_compiles_once_for_initial_and_carried_seeds():
    """The init seed is an expanded view, a carried one is not, and a later segment's carry is
    neither; the carry built from a seed has the later segments' layout, so a forward compiles
    the segment once (and a CUDA graph, whose static inputs are contiguous copies, meets the
    layout its warm-up compiled)."""
    from torch._dynamo.testing import CompileCounter

    config = HRMConfig(seq_len=9, hidden_size=16, num_heads=2, H_layers=1, L_layers=1,
                       H_cycles=1, L_cycles=2, segments=3, dtype="float32")
    model, counter = HRMQNetwork(config), CompileCounter()
    torch._dynamo.reset()
    model.compile(backend=counter)
    x = torch.randint(0, 131, (4, 9))
    with torch.no_grad():
        out = model(x, model.init_seed(4))  # the first segment's carry, then the others'
        compiled = counter.frame_count
        model(x, out.seed)
        model(x, Seed(out.seed.z_H.clone(), out.seed.z_L.clone()))
    assert compiled == 1 and counter.frame_count == compiled
    torch._dynamo.reset()


@pytest.mark.parametrize("carry_z", [True, False])
def test_a_compiled_run_compiles_its_segment_twice_and_each_run_anew(carry_z, compile_counter):
    """One variant without grad (acting, the target net, validation: same shapes here) and one
    with (training); each compile costs a GPU window minutes. A new run starts dynamo afresh:
    the variants of earlier runs in a process would add up to its recompile limit, past which
    the segment silently runs eagerly (the last runs here, before the reset)."""
    for run in range(5):  # five model sizes: without the reset, the cache overflows
        trainer = Trainer(tiny_config(
            "train.compile='on'", f"train.carry_z={str(carry_z).lower()}", "env.num_envs=16",
            f"model.hidden_size={16 + 8 * run}", "train.learning_starts=32"))
        while len(trainer.replay) < 32:
            trainer.collect()
        trainer.learn()
        trainer.validate()
        assert compile_counter.frame_count == 2 * (run + 1)


@needs_compile
def test_a_compiled_agent_gives_the_eager_q_and_evaluate_compiles_on_request(tmp_path, capsys,
                                                                            request):
    """load_agent(compile=True), for long rollouts (notebooks 03 and 05, `evaluate --compile`)."""
    Trainer(tiny_config("model.dtype='float32'", "model.segments=1"), tmp_path).save()
    path = tmp_path / CHECKPOINT
    (eager, config), (compiled, compiled_config) = load_agent(path), load_agent(path, compile=True)
    # compiled on a CPU, "auto" attention is explicit math (faster there than SDPA)
    assert (config.model.attn_backend, compiled_config.model.attn_backend) == ("auto", "math")
    obs = config.env.make(8, seed=0).reset(seed=0)
    with torch.no_grad():
        expected, got = (model(obs, model.init_seed(8)).q for model in (eager, compiled))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    counter = request.getfixturevalue("compile_counter")  # from here on, compiles are counted
    results = []
    for flags in ([], ["--compile"]):
        torch._dynamo.reset()
        main(["evaluate", "--checkpoint", str(path), "--episodes", "8", "--json", *flags])
        results.append((json.loads(capsys.readouterr().out), counter.frame_count))
    assert results[0][1] == 0 and results[1][1] == 1
    assert results[0][0] == results[1][0]


@needs_compile
@pytest.mark.slow
def test_a_short_compiled_run_is_the_eager_run():
    """On a CPU the fast path is torch.compile alone (no CUDA graphs)."""
    check = check_fast_path(torch.device("cpu"), tolerance=1e-5)["fast"]
    assert check["ok"], check


def test_compare_runs_sees_a_different_action_and_a_moved_weight():
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(Trainer(load_profile("paper-fourrooms", [*CHECK, "train.device='cpu'"])))
        runs[-1].train(progress=False)
    assert compare_runs(*runs) == {"same_transitions": True, "max_z_diff": 0.0, "max_weight_diff": 0.0}
    runs[0].replay.storage["action"][3] ^= 1
    with torch.no_grad():
        next(runs[0].model.parameters())[0] += 0.5
    diff = compare_runs(*runs)
    assert not diff["same_transitions"] and diff["max_weight_diff"] == pytest.approx(0.5)


@needs_cuda
@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("carry_z", [True, False])  # Reset Z acts from the (expanded) init seed
def test_a_short_cuda_graphed_run_is_the_eager_run(compile, carry_z, monkeypatch):
    import hrm_agent.bench.train as bench_train

    if not compile:  # CUDA graphs alone
        monkeypatch.setitem(bench_train.__dict__, "mode_overrides", lambda mode: (
            ["train.compile='off'", f"train.cuda_graphs='{'on' if mode == 'fast' else 'off'}'"]))
    check = bench_train.check_fast_path(torch.device("cuda"), tolerance=1e-5,
                                        overrides=(f"train.carry_z={str(carry_z).lower()}",))["fast"]
    assert check["ok"], check


@needs_cuda
def test_training_cycles_do_not_synchronize_on_cuda():
    """Past the warm-up (compilation, capture), a window of cycles on the fast path with CUDA's
    sync debug mode set to raise."""
    trainer = Trainer(tiny_config("train.device='cuda'", "train.learning_starts=64"))
    assert trainer.compiled and trainer.graphed
    while len(trainer.replay) < 64:
        trainer.collect()
    for _ in range(8):
        trainer.collect()
        trainer.learn()
    while trainer.env._steps:  # to the start of a window
        trainer.collect()
        trainer.learn()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(trainer.env.WINDOW - 1):
            trainer.collect()
            trainer.learn()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_an_emulated_graph_replays_tensor_state_and_freezes_python_values():
    """The emulation of CUDA graphs the next test relies on: a capture changes nothing, a replay
    advances tensor state, and a Python value read at the capture stays as it was."""
    counter, scale = torch.zeros(()), [2.0]

    def fn(x):
        counter.add_(1)
        return x * scale[0] + counter

    graphed = EmulatedCUDAGraphed(fn, warmup=1)
    assert graphed(torch.ones(2)).tolist() == [3.0, 3.0]  # eager warm-up: counter 1
    assert graphed(torch.ones(2)).tolist() == [4.0, 4.0]  # capture (no effect), then a replay
    scale[0] = 5.0
    assert graphed(torch.full((2,), 10.0)).tolist() == [23.0, 23.0]  # eagerly: 53
    assert counter.item() == 3.0


@pytest.mark.parametrize("overrides", [
    ("train.carry_z=true",), ("train.carry_z=false",), ("train.carry_z=true", "train.n_step=3"),
    # the acting graph captured mid-run, after random steps that did not run the model
    ("train.carry_z=false", "train.eps_mode='batch'", "train.eps_start=0.5"),
])
def test_a_short_run_under_emulated_cuda_graphs_is_the_eager_run(overrides, monkeypatch):
    """What the trainer captures (acting forward; targets + every optimizer step of a minibatch)
    is safe to graph: replayed with CUDA graph semantics on a CPU (`graph_replay`), a run is
    bitwise the eager run. A Python value that changed between replays (lr in its warm-up, say)
    or state made anew after the capture would show here, without a GPU."""
    graphs = []

    def emulated(fn):
        graphs.append(EmulatedCUDAGraphed(fn))
        return graphs[-1]

    monkeypatch.setattr(trainer_module, "CUDAGraphed", emulated)
    monkeypatch.setattr(trainer_module, "fast_path", lambda tc, device: (False, tc.cuda_graphs != "off"))
    check = check_fast_path(torch.device("cpu"), tolerance=0.0, overrides=(
        *overrides, "train.val_interval=24", "train.val_episodes=8"))["fast"]  # (one short validation)
    assert check == {"same_transitions": True, "max_z_diff": 0.0, "max_weight_diff": 0.0, "ok": True}
    assert len(graphs) == 2 and all(g.graph is not None and g.graph.ops for g in graphs)


def test_validation_replays_the_acting_graph_once_captured(monkeypatch):
    """A validation of one episode per training env runs through the acting forward's graph
    (on a GPU, far faster than the compiled segments launched one by one) and measures what
    the plain forward measures; one of another size cannot, and runs plainly."""
    monkeypatch.setattr(trainer_module, "CUDAGraphed", EmulatedCUDAGraphed)
    monkeypatch.setattr(trainer_module, "fast_path", lambda tc, device: (False, True))
    trainer = Trainer(load_profile("paper-fourrooms", [*CHECK, "train.device='cpu'"]))
    acting = trainer.agent.forward
    replays = []
    trainer.validate()  # before the capture: plainly
    while acting.graph is None:
        trainer.collect()
    replay = acting.graph.replay
    monkeypatch.setattr(acting.graph, "replay", lambda: replays.append(1) or replay())
    tc = trainer.config.train
    plain = trainer_module.evaluate(trainer.model, trainer.config.env, carry_z=tc.carry_z,
                                    episodes=tc.val_episodes, seed=tc.val_seed)
    assert trainer.validate() == pytest.approx({"step": 0, **plain}, rel=0, abs=0, nan_ok=True)
    assert len(replays) == trainer.config.env.max_steps  # (an untrained agent: some episode times out)
    trainer.config = dataclasses.replace(trainer.config, train=dataclasses.replace(tc, val_episodes=4))
    replays.clear()
    trainer.validate()
    assert not replays
