import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import hrm_agent.trainer as trainer_module
from hrm_agent.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from hrm_agent.trainer import CHECKPOINT, METRICS, Trainer, load_agent
from tests.conftest import TINY, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _replay(trainer):
    s = trainer.replay.storage
    return {k: v[: len(trainer.replay)] for k, v in s.items()}


def test_carry_z_replay_chains_seeds_through_env_time_and_resets_at_episode_starts():
    trainer = Trainer(tiny_config("env.max_steps=5", "train.learning_starts=10000"))
    n = trainer.env.num_envs
    for _ in range(12):  # episodes of <= 5 steps: several boundaries per env
        trainer.collect()
    r = _replay(trainer)
    init = trainer.model.init_seed(n)
    steps = len(trainer.replay) // n
    done = (r["terminated"] | r["truncated"]).view(steps, n)
    for name in ("z_H", "z_L"):
        prev, nxt = r[f"prev_{name}"].view(steps, n, -1), r[f"next_{name}"].view(steps, n, -1)
        init_v = getattr(init, name)
        assert torch.equal(prev[0], init_v)  # the first step of every env starts from the init
        for t in range(1, steps):
            expected = torch.where(done[t - 1, :, None], init_v, nxt[t - 1])
            assert torch.equal(prev[t], expected), f"{name} chain broken at t={t}"
    assert done.any(), "the test needs episode boundaries"
    # the chain carries information: a seed differs from the init once an env has acted
    assert not torch.equal(r["next_z_H"][0], init.z_H[0])


def test_reset_z_stores_no_seeds():
    trainer = Trainer(tiny_config("train.carry_z=false", "train.learning_starts=10000"))
    trainer.collect()
    assert set(trainer.replay.storage) == {"obs", "action", "reward", "terminated", "truncated",
                                           "next_obs"}


@pytest.mark.parametrize("eps, fewest, most", [(1.0, 0, 0), (0.5, 1, 23), (0.0, 24, 24)])
def test_batch_exploration_runs_the_model_only_when_the_whole_batch_acts_greedily(eps, fewest, most):
    """The authors' Reset Z ε: with probability ε every env acts at random and the model does
    not run; otherwise every env takes its greedy action."""
    trainer = Trainer(tiny_config("train.carry_z=false", "train.eps_mode='batch'",
                                  f"train.eps_start={eps}", f"train.eps_end={eps}",
                                  "train.learning_starts=10000"))
    forward, calls = trainer.agent.forward, []
    trainer.agent.forward = lambda *args: calls.append(1) or forward(*args)
    greedy_steps = 0
    for t in range(24):
        obs, ran = trainer.obs, len(calls)
        trainer.collect()
        actions = _replay(trainer)["action"][-trainer.env.num_envs:]
        with torch.no_grad():
            greedy = trainer.model(obs, trainer.model.init_seed(len(obs))).q.argmax(-1)
        if len(calls) > ran:
            assert torch.equal(actions.long(), greedy), f"step {t}: not all greedy"
            greedy_steps += 1
        else:
            assert not torch.equal(actions.long(), greedy), f"step {t}: not random"
    assert greedy_steps == len(calls)
    assert fewest <= greedy_steps <= most  # of 24 steps


def test_next_obs_is_the_true_final_observation_not_the_reset_one():
    trainer = Trainer(tiny_config("env.max_steps=3", "train.learning_starts=10000"))
    for _ in range(3):
        trainer.collect()
    r = _replay(trainer)
    n = trainer.env.num_envs
    last = slice(2 * n, 3 * n)  # every env truncates at its third step
    assert r["truncated"][last].all()
    assert not torch.equal(r["next_obs"][last], trainer.obs)  # trainer.obs is the reset one


def _params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


class Killed(Exception):
    pass


@pytest.mark.parametrize("exploration", [
    [],  # Carry Z, ε per env
    ["train.carry_z=false", "train.eps_mode='batch'", "train.eps_start=0.5"],  # coins per batch
])
def test_resume_after_a_kill_reproduces_the_uninterrupted_run_exactly(tmp_path, monkeypatch,
                                                                     exploration):
    cfg = tiny_config("train.total_steps=16", "train.save_replay=true", *exploration)
    full = Trainer(cfg, tmp_path / "full")
    full.train(progress=False)

    # kill a second run at step 12, after its checkpoint at step 8 and before the next one
    learn = Trainer.learn

    def learn_then_die(self):
        learn(self)
        if self.global_step >= 12:
            raise Killed

    monkeypatch.setattr(Trainer, "learn", learn_then_die)
    with pytest.raises(Killed):
        Trainer(cfg, tmp_path / "part").train(progress=False)
    monkeypatch.setattr(Trainer, "learn", learn)

    resumed = Trainer(cfg, tmp_path / "part", resume=True)
    assert resumed.global_step == 8
    resumed.train(progress=False)
    assert resumed.global_step == full.global_step == 16
    assert torch.equal(_params(resumed), _params(full))
    assert torch.equal(resumed.obs, full.obs)
    assert _rows(tmp_path / "part") == _rows(tmp_path / "full")
    [resume] = _rows(tmp_path / "part", "resume")
    assert resume == {"kind": "resume", "step": 8, "env_steps": 40, "replay_restored": True,
                      "replay_size": 40, "config_changes": [], "torn_metrics_line_dropped": False}


def _rows(run_dir, kind=None):
    """The metrics records of `kind` (default: all but "resume") without wall-clock figures,
    which are all that may differ between a resumed and an uninterrupted run."""
    out = []
    for line in (run_dir / METRICS).read_text().splitlines():
        row = json.loads(line)
        if (row["kind"] == kind) if kind else (row["kind"] != "resume"):
            out.append({k: v for k, v in row.items() if "minutes" not in k and "_per_s" not in k})
    return out


def _train_command(out, *args):
    return [sys.executable, "-m", "hrm_agent", "train", "--out", str(out), "--no-progress", *args]


def _run(command, env):
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_a_run_killed_by_sigkill_resumes_to_the_result_of_the_uninterrupted_run(tmp_path):
    """A real kill (SIGKILL, no cleanup) of a CLI run, then `train --resume` with no other
    flags: same weights, counters and metrics as the run that was never interrupted."""
    sets = [arg for field in [*TINY, "train.total_steps=32", "train.save_replay=true",
                              "train.num_threads=1"] for arg in ("--set", field)]
    args = ["--profile", "paper-fourrooms", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _run(_train_command(tmp_path / "full", *args), env)

    checkpoint = tmp_path / "part" / CHECKPOINT
    proc = subprocess.Popen(_train_command(tmp_path / "part", *args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while not checkpoint.exists():  # the first one is at step 8 of 32
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = load_checkpoint(checkpoint)["counters"]["global_step"]
    assert 8 <= killed_at < 32

    _run(_train_command(tmp_path / "part", "--resume"), env)
    full, part = load_checkpoint(tmp_path / "full" / CHECKPOINT), load_checkpoint(checkpoint)
    assert part["counters"]["global_step"] == full["counters"]["global_step"] == 32
    assert part["counters"]["env_steps"] == full["counters"]["env_steps"]
    for name in ("model", "target"):
        for key, value in full[name].items():
            assert torch.equal(part[name][key], value), f"{name}.{key} differs"
    assert _rows(tmp_path / "part") == _rows(tmp_path / "full")
    [resume] = _rows(tmp_path / "part", "resume")
    assert resume["step"] == killed_at and resume["replay_restored"] is True


def test_without_save_replay_the_resume_record_says_the_buffer_was_not_restored(tmp_path):
    Trainer(tiny_config("train.total_steps=8"), tmp_path).train(progress=False)
    resumed = Trainer(tiny_config("train.total_steps=12"), tmp_path, resume=True)
    assert len(resumed.replay) == 0
    [resume] = _rows(tmp_path, "resume")
    assert resume["replay_restored"] is False and resume["replay_size"] == 0
    assert resume["config_changes"] == ["train.total_steps: 8 != 12"]


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason="needs a CUDA device"))])
def test_resume_puts_optimizer_step_counts_beside_their_parameters(tmp_path, device):
    """AdamATan2's bias corrections are computed from `step` on the device (float64, no host
    read); a checkpoint loads to the CPU first, so resuming must move the counts back."""
    cfg = tiny_config("train.total_steps=8", f"train.device='{device}'")
    Trainer(cfg, tmp_path).train(progress=False)
    resumed = Trainer(cfg, tmp_path, resume=True)
    states = list(resumed.optimizer.state.values())
    assert states and all(s["step"].device.type == device and s["step"].dtype == torch.float64
                          and float(s["step"]) == 8 for s in states)
    assert all(s["exp_avg"].device.type == device for s in states)
    assert resumed.obs.device.type == device and resumed.agent.seed.z_H.device.type == device


def test_resume_drops_a_torn_last_metrics_line_and_names_a_corrupt_one(tmp_path):
    cfg = tiny_config("train.total_steps=8")
    Trainer(cfg, tmp_path).train(progress=False)
    metrics = tmp_path / METRICS
    good = metrics.read_text()
    metrics.write_text(good + '{"kind": "train", "step": 99, "los')  # killed mid-write
    Trainer(cfg, tmp_path, resume=True)
    assert metrics.read_text().startswith(good)
    [resume] = _rows(tmp_path, "resume")
    assert resume["torn_metrics_line_dropped"] is True

    lines = good.splitlines(keepends=True)
    metrics.write_text("".join(lines[:1] + ['{"kind": "tr\n'] + lines[1:]))
    with pytest.raises(ValueError, match=rf"{METRICS}, line 2: not a JSON record"):
        Trainer(cfg, tmp_path, resume=True)


def test_training_updates_the_online_net_and_polyak_moves_the_target(tmp_path):
    trainer = Trainer(tiny_config("train.total_steps=8", "train.target_init='copy'"), tmp_path)
    before = _params(trainer)
    target_before = torch.cat([p.flatten() for p in trainer.target.parameters()])
    trainer.train(progress=False)
    after = _params(trainer)
    target_after = torch.cat([p.flatten() for p in trainer.target.parameters()])
    assert not torch.equal(before, after)
    assert not torch.equal(target_before, target_after)
    # Polyak with decay 0.999 keeps the target close to where it started
    assert (target_after - target_before).abs().max() < (after - before).abs().max()
    rows = [json.loads(l) for l in (tmp_path / METRICS).read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"train", "val"}
    assert all(0.0 <= r["success_rate"] <= 1.0 for r in rows if r["kind"] == "val")


def test_out_dir_is_not_silently_reused(tmp_path):
    cfg = tiny_config("train.total_steps=2")
    Trainer(cfg, tmp_path).train(progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(cfg, tmp_path)
    Trainer(cfg, tmp_path, overwrite=True)


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    Trainer(tiny_config("train.total_steps=2"), tmp_path).train(progress=False)
    with pytest.raises(CheckpointError, match=r"different config: .*train.lr: 0.001 != 0.002"):
        Trainer(tiny_config("train.total_steps=2", "train.lr=2e-3"), tmp_path, resume=True)


def test_resume_on_another_kind_of_device_is_refused_in_one_line(tmp_path):
    Trainer(tiny_config("train.total_steps=2"), tmp_path).train(progress=False)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    state["generator"] = torch.zeros(16, dtype=torch.uint8)  # the size of a CUDA (Philox) state
    save_checkpoint(state, tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError, match="written on another kind of device than cpu"):
        Trainer(tiny_config("train.total_steps=2"), tmp_path, resume=True)


def test_a_resumed_run_may_be_extended_and_change_how_it_executes(tmp_path):
    Trainer(tiny_config("train.total_steps=4"), tmp_path).train(progress=False)
    longer = Trainer(tiny_config("train.total_steps=6", "train.max_minutes=30",
                                 "model.attn_backend='math'"), tmp_path, resume=True)
    assert longer.global_step == 4
    longer.train(progress=False)
    assert longer.global_step == 6


def test_corrupt_truncated_and_foreign_checkpoints_give_clear_errors(tmp_path):
    Trainer(tiny_config("train.total_steps=2"), tmp_path).train(progress=False)
    path = tmp_path / CHECKPOINT
    data = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "truncated.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an hrm-agent checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_checkpoint_whose_tensors_do_not_fit_its_config_is_refused(tmp_path):
    Trainer(tiny_config("train.total_steps=2"), tmp_path).train(progress=False)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    state["config"]["model"]["hidden_size"] = 64  # config says 64, tensors are 32 wide
    del state["format"]
    save_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_agent(tmp_path / "bad.pt")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = save_checkpoint({"config": {}, "model": {}}, tmp_path / "c.pt")
    good = path.read_bytes()

    def exploding_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"config": {}, "model": {}}, path)
    assert path.read_bytes() == good
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_a_checkpoint_holds_a_view_without_the_rest_of_its_storage(tmp_path):
    """A Carry Z seed is the last token of each env's z: saved as a view, it wrote all of z
    (27 MB at the paper's size, past what a GPU window returns)."""
    z = torch.randn(256, 122, 64)
    path = save_checkpoint({"config": {}, "model": {}, "seed": z[:, -1]}, tmp_path / "c.pt")
    assert path.stat().st_size < 2 * z[:, -1].nbytes
    assert torch.equal(load_checkpoint(path)["seed"], z[:, -1])


def test_validation_time_does_not_count_as_training_time(tmp_path, monkeypatch):
    """max_minutes and the logged minutes measure collect + learn only (the paper's timing)."""
    def slow_evaluate(*args, **kwargs):
        time.sleep(0.5)
        return {"success_rate": 0.0, "mean_episode_length": 80.0}

    monkeypatch.setattr(trainer_module, "evaluate", slow_evaluate)
    cfg = tiny_config("train.total_steps=16", "train.val_interval=4")
    trainer = Trainer(cfg, tmp_path)
    start = time.perf_counter()
    trainer.train(progress=False)
    wall = time.perf_counter() - start
    validations = sum(json.loads(l)["kind"] == "val" for l in (tmp_path / METRICS).read_text().splitlines())
    assert validations == 4
    assert trainer.train_seconds < wall - 0.5 * validations


def test_best_agent_is_kept_and_sigterm_checkpoints_without_a_final_validation(tmp_path, monkeypatch):
    """best.pt holds the agent of the best validation (success, then shorter episodes); a stop
    request (SIGTERM) ends the loop at a cycle boundary and checkpoints at once."""
    results = iter([(0.2, 70.0), (0.5, 60.0), (0.5, 65.0), (0.1, 80.0)])

    def fake_evaluate(*args, **kwargs):
        success, length = next(results)
        return {"success_rate": success, "mean_episode_length": length}

    monkeypatch.setattr(trainer_module, "evaluate", fake_evaluate)
    trainer = Trainer(tiny_config("train.total_steps=64", "train.val_interval=4"), tmp_path)
    steps = []

    def stop_after_four_validations(*args, **kwargs):
        steps.append(trainer.global_step)
        if len(steps) == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # as the GPU job's deadline does
        return fake_evaluate()

    monkeypatch.setattr(trainer_module, "evaluate", stop_after_four_validations)
    with trainer.stop_on_signals():
        trainer.train(progress=False)
    assert trainer.stop_requested and trainer.global_step == steps[-1] < 64  # no extra validation
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["last_val"]["step"] == steps[1] and best["last_val"]["success_rate"] == 0.5
    assert load_checkpoint(tmp_path / CHECKPOINT)["counters"]["global_step"] == trainer.global_step
    last = json.loads((tmp_path / METRICS).read_text().splitlines()[-1])
    assert last["kind"] == "stop" and last["step"] == trainer.global_step  # the history says so
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again


def test_a_run_from_before_a_config_field_existed_resumes(tmp_path):
    """Fields added later (model.kind, grid_width, ...) take their defaults on resume."""
    trainer = Trainer(tiny_config("train.total_steps=8"), tmp_path)
    trainer.train(progress=False)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    for field in ("kind", "grid_width", "pos_encoding", "readout"):
        del state["config"]["model"][field]
    save_checkpoint(state, tmp_path / CHECKPOINT)
    resumed = Trainer(tiny_config("train.total_steps=8"), tmp_path, resume=True)
    assert resumed.global_step == trainer.global_step
