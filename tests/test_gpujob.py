"""The GPU training job, dry-run on the CPU at toy scale: report, smoke, a queue of two runs in
parallel stopped at their deadline, the files a GPU window returns, and a second window that
resumes from them after `gpu-import`."""
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hrm_agent.cli import main
from hrm_agent.gpujob import atomic_write, gpu_job, import_window
from hrm_agent.plots import trained_with_carry_z
from hrm_agent.trainer import CHECKPOINT, CONFIG, METRICS

RUNS = ["fourrooms-carry-z", "maze-reset-z"]


def _job(out, tmp_path, **kwargs):
    return gpu_job(out, device="cpu", toy=True, minutes=1.0, runs=RUNS, parallel=2,
                   work=tmp_path / "work", **kwargs)


@pytest.mark.slow
def test_dry_run_returns_resumable_runs_and_a_second_window_resumes_them(tmp_path):
    info = _job(tmp_path / "out1", tmp_path)
    out = tmp_path / "out1"
    files = sorted(p.name for p in out.iterdir())
    assert all(p.is_file() for p in out.iterdir()) and len(files) <= 8  # the device's limits
    assert files == sorted(["job.log", "job.json", METRICS, "best.pt", *(f"{r}.pt" for r in RUNS)])
    assert info["smoke"]["eager"]["ok"] and info["smoke"]["eager"]["optimizer_steps_per_s"] > 0
    records = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    for run in RUNS:
        summary = info["runs"][run]
        # stopped by SIGTERM at the deadline, the trainer checkpoints and exits cleanly
        assert summary["state"] == "done" and summary["step"] > 0, summary
        state = torch.load(out / f"{run}.pt", weights_only=True)
        assert "storage" not in state["replay"]  # no replay buffer comes back
        steps = [r["step"] for r in records if r["run"] == run]
        assert state["counters"]["global_step"] == max(steps)

    into, agents = tmp_path / "gpu-runs", tmp_path / "agents"
    import_window(out, into, agents)
    assert len((into / "windows.jsonl").read_text().splitlines()) == 1
    window = f"{time.strftime('%Y-%m-%d')} ({info['wall_s'] / 60:.1f} min, eager, "
    share = (into / "README.md").read_text().split(window)[1].split("%")[0]
    assert 0 < int(share) < 100  # the smoke test, start-up and validations took the rest
    for run in RUNS:
        assert (into / run / CHECKPOINT).is_file() and (agents / run / "agent.pt").is_file()
        # a run folder as notebook 02 plots it: its config says how it was trained
        assert trained_with_carry_z(into / run) == run.endswith("carry-z")
        # and explored as the authors' runs of its condition did
        config = json.loads((into / run / CONFIG).read_text())
        assert config["train"]["eps_mode"] == ("per_env" if run.endswith("carry-z") else "batch")

    info2 = _job(tmp_path / "out2", tmp_path, carried=into)
    for run in RUNS:
        summary = info2["runs"][run]
        assert summary["resumed"] and summary["state"] == "done", summary
        assert summary["start_step"] == info["runs"][run]["step"]
        assert summary["step"] > summary["start_step"]
    records2 = [json.loads(line) for line in (tmp_path / "out2" / METRICS).read_text().splitlines()]
    first = [r for r in records if r["run"] == RUNS[0]]
    assert [r for r in records2 if r["run"] == RUNS[0]][: len(first)] == first  # history kept


@pytest.mark.slow
def test_a_run_whose_fast_path_fails_goes_on_a_step_down(tmp_path, monkeypatch):
    """A path that breaks on the GPU must not cost the window: the run restarts a step down,
    from all our kernels to the fused blocks alone, to the fast path, and from there to eager."""
    import hrm_agent.gpujob as gpujob

    # on a CPU, CUDA graphs fail at once with a one-line error (exit 2), like a broken fast path
    for path in ("fused", "fused-blocks", "fast"):
        monkeypatch.setitem(gpujob.PATHS, path, ["train.cuda_graphs='on'"])
    checked, popen = [], subprocess.Popen  # each train process: was it told to check our kernels?

    def spy(cmd, *args, env=None, **kwargs):
        if "train" in cmd:
            checked.append((env or {}).get("HRM_AGENT_CHECK_KERNELS"))
        return popen(cmd, *args, env=env, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)
    info = gpu_job(tmp_path / "out", device="cpu", toy=True, minutes=1.25, runs=RUNS[:1],
                   fast="fused", work=tmp_path / "work")
    summary = info["runs"][RUNS[0]]
    assert info["fast"] is True and info["fused"] == "fused" and "bench" not in info  # unmeasured
    assert summary["state"] == "done" and summary["step"] > 0, summary
    log = (tmp_path / "out" / "job.log").read_text()
    assert log.count("failed (exit 2)") == 3 and "needs a CUDA device" in log
    steps = ["(fast path, fused)", "retrying on the fast path with the fused blocks, each kernel "
             "checked",
             "(fast path, fused-blocks)", "retrying on the fast path without our kernels",
             "retrying on the eager path"]
    assert [log.index(step) for step in steps] == sorted(log.index(step) for step in steps)
    # the smoke test, then the run: only its retry on our kernels names where a fault surfaces
    assert checked == [None, None, "1", None, None]
    assert f"{RUNS[0]}: train.log; the end of its output:" in log  # what the run printed, for a traceback


def test_a_run_that_fails_on_all_our_kernels_skips_fused_blocks_that_failed_their_check(
        tmp_path, monkeypatch):
    job = _auto_job(tmp_path, monkeypatch)
    bench = {"ok": True, "result": {"fast_path_check": {"ok": True}, "paper-fourrooms": {
        "eager": {"optimizer_steps_per_s": 40.0}, "fast": {"optimizer_steps_per_s": 300.0}}}}
    fused = _fused_bench(fused=(True, 400.0), blocks=(False, 350.0))
    monkeypatch.setattr(job, "benchmark", lambda profile, modes: bench if "eager" in modes else fused)
    assert job.choose_fast() is True and job.fused == "fused" and not job.blocks_fallback


def test_job_input_errors_are_one_line(tmp_path, capsys):
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as exit_info:
            main(["gpu-job", "--out", str(tmp_path / "o")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "no CUDA device" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        _job(tmp_path / "used", tmp_path)
    with pytest.raises(ValueError, match="unknown run"):
        gpu_job(tmp_path / "o2", device="cpu", toy=True, runs=["fourrooms"])
    with pytest.raises(ValueError, match="cannot go with --fast on"):
        gpu_job(tmp_path / "o3", device="cpu", toy=True, fast="on", bench_maze=True)
    with pytest.raises(ValueError, match="--fast must be auto, bench, on, off or fused, got 'fastest'"):
        gpu_job(tmp_path / "o4", device="cpu", toy=True, fast="fastest")


def test_a_carried_checkpoint_of_another_config_is_refused_before_anything_runs(tmp_path):
    from hrm_agent.experiment import load_profile
    from hrm_agent.gpujob import TOY, run_overrides
    from hrm_agent.trainer import Trainer

    carried = tmp_path / "carried" / "fourrooms-carry-z"
    config = load_profile("paper-fourrooms", [*run_overrides("fourrooms-carry-z", True),
                                              "model.hidden_size=64"])
    assert "model.hidden_size=32" in TOY
    Trainer(config, carried).save()
    with pytest.raises(ValueError, match="fourrooms-carry-z.*hidden_size"):
        _job(tmp_path / "out", tmp_path, carried=tmp_path / "carried")
    assert not (tmp_path / "out" / "fourrooms-carry-z.pt").exists()


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "run.pt"
    path.write_bytes(b"previous")

    def full_disk(tmp):
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, full_disk)
    assert path.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["run.pt"]


@pytest.mark.slow
def test_train_evaluate_export_need_neither_gymnasium_nor_matplotlib(tmp_path):
    """The GPU image has torch, numpy and tqdm only: the train path must not import the rest."""
    script = f"""
import sys
import time
for name in ("gymnasium", "matplotlib", "ipywidgets", "PIL", "IPython"):
    sys.modules[name] = None  # importing any of them now raises ImportError
from hrm_agent.cli import main
run = {str(tmp_path / "run")!r}
main(["train", "--profile", "paper-fourrooms", "--out", run, "--no-progress",
      *[a for o in {TINY_JOB!r} for a in ("--set", o)]])
main(["evaluate", "--checkpoint", run + "/checkpoint.pt", "--episodes", "4", "--json"])
main(["export", "--checkpoint", run + "/checkpoint.pt", "--out", run + "/agent.pt"])
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "agent.pt").is_file()


TINY_JOB = ["model.hidden_size=32", "model.H_layers=1", "model.L_layers=1", "model.H_cycles=1",
            "model.segments=2", "env.num_envs=8", "train.batch_size=16",
            "train.learning_starts=16", "train.total_steps=8", "train.val_episodes=4",
            "train.device='cpu'"]


def _auto_job(tmp_path, monkeypatch, fast="auto", carried=None, tilings=None, **kwargs):
    """A job (`--fast auto` unless told) whose smoke test passes (the benchmark is the test's
    to fake) and whose `bench fused` gives `tilings` (default: it fails)."""
    from hrm_agent.gpujob import Job

    (tmp_path / "out").mkdir()
    job = Job(tmp_path / "out", tmp_path / "work", ["fourrooms-carry-z"], minutes=1.0, parallel=1,
              carried=carried, toy=True, fast=fast, device="cpu", **kwargs)
    monkeypatch.setattr(job, "smoke", lambda: {"ok": True, "wall_s": 1.0, "optimizer_steps_per_s": 40.0})
    bench_fused = ({"ok": True, "stdout": json.dumps(tilings) + "\n"} if tilings else
                   {"ok": False, "reason": "no output", "stderr": "Traceback: ..."})
    run = job.subprocess
    monkeypatch.setattr(job, "subprocess", lambda cmd, timeout_s: (
        dict(bench_fused) if cmd[-3:] == ["bench", "fused", "--json"] else run(cmd, timeout_s)))
    return job


@pytest.mark.parametrize("bench, expected", [
    ({"ok": False, "reason": "timed out after 300 s"}, False),
    ({"ok": True, "result": {"fast_path_check": {"ok": False},
                             "paper-fourrooms": {"eager": {"optimizer_steps_per_s": 40.0},
                                                 "fast": {"optimizer_steps_per_s": 300.0}}}}, False),
    ({"ok": True, "result": {"fast_path_check": {"ok": True},
                             "paper-fourrooms": {"eager": {"optimizer_steps_per_s": 40.0},
                                                 "fast": {"optimizer_steps_per_s": 30.0}}}}, False),
    ({"ok": True, "result": {"fast_path_check": {"ok": True},
                             "paper-fourrooms": {"eager": {"optimizer_steps_per_s": 40.0},
                                                 "fast": {"optimizer_steps_per_s": 300.0}}}}, True),
], ids=["bench failed", "not equal to eager", "slower", "equal and faster"])
def test_auto_trains_fast_only_if_the_benchmark_finds_it_equal_and_faster(tmp_path, monkeypatch,
                                                                          bench, expected):
    job = _auto_job(tmp_path, monkeypatch)
    not_run = {"ok": False, "reason": "no output"}
    monkeypatch.setattr(job, "benchmark", lambda profile, modes: bench if "eager" in modes else not_run)
    assert job.choose_fast() is expected
    assert job.info["bench"] is bench and "bench_maze" not in job.info
    assert not job.fused


def _fused_bench(**modes: tuple[bool, float]) -> dict:
    """A fused bench's outcome: per mode (fused, blocks: fused-blocks), its check and rate."""
    names = {"fused": "fused", "blocks": "fused-blocks"}
    result = {f"{names[m]}_check": {"ok": ok} for m, (ok, _) in modes.items()}
    result["paper-fourrooms"] = {names[m]: {"optimizer_steps_per_s": rate}
                                 for m, (_, rate) in modes.items()}
    return {"ok": True, "result": result}


FAILED = {"ok": False, "reason": "RuntimeError: Triton Error [CUDA]: an illegal memory access"}
BLOCKS = _fused_bench(blocks=(True, 350.0))


DIED_AFTER_BLOCKS = {"ok": False, "reason": "Segmentation fault",
                     "partial": _fused_bench(blocks=(True, 350.0))["result"]}


@pytest.mark.parametrize("both, blocks_alone, fused", [
    (_fused_bench(fused=(True, 400.0), blocks=(True, 350.0)), None, "fused"),
    (_fused_bench(fused=(True, 320.0), blocks=(True, 350.0)), None, "fused-blocks"),
    (_fused_bench(fused=(False, 400.0), blocks=(True, 350.0)), None, "fused-blocks"),
    (DIED_AFTER_BLOCKS, None, "fused-blocks"),
    (_fused_bench(fused=(False, 400.0), blocks=(False, 350.0)), BLOCKS, "fused-blocks"),
    (FAILED, BLOCKS, "fused-blocks"),
    (FAILED, FAILED, ""),
    (_fused_bench(fused=(True, 200.0), blocks=(True, 250.0)), None, ""),
    (_fused_bench(fused=(True, 60.0), blocks=(True, 50.0)), None, ""),
], ids=["fused fastest", "blocks alone faster", "fused not equal to eager",
        "the bench died after the blocks alone", "neither equal, the blocks alone at the "
        "reference tiling are", "failed, the blocks alone did not", "both failed",
        "slower than fast", "slower, eager slowest"])
def test_our_kernels_train_only_if_their_own_bench_finds_them_equal_and_faster_than_fast(
        tmp_path, monkeypatch, both, blocks_alone, fused):
    """Our kernels are benched in a process of their own, after eager and fast (a kernel that
    fails, even one that breaks its CUDA context, leaves the fast path's verdict standing):
    the fused blocks alone, then all of them (what a bench that died had measured counts), the
    faster trained; should neither pass, the fused blocks alone once more at the reference
    tiling, as an H100 trained on them."""
    job = _auto_job(tmp_path, monkeypatch)
    bench = {"ok": True, "result": {"fast_path_check": {"ok": True}, "paper-fourrooms": {
        "eager": {"optimizer_steps_per_s": 40.0}, "fast": {"optimizer_steps_per_s": 300.0}}}}
    benches, asked = {("fused-blocks", "fused"): both, ("fused-blocks",): blocks_alone}, []
    monkeypatch.setattr(job, "benchmark", lambda profile, modes: asked.append(modes) or (
        benches.get(tuple(modes)) or bench))
    assert job.choose_fast() is True and job.fused == fused
    assert asked == [["eager", "fast"], ["fused-blocks", "fused"]] + (
        [["fused-blocks"]] if blocks_alone else [])
    assert job.info["bench_fused"] is (blocks_alone or both)


def _tilings(**us_per_pass) -> dict:
    """A `bench fused` result: per tiling name (e.g. t64_64_4_1_128_0), µs per pass at two shapes
    or None for a tiling whose process failed."""
    tilings = {}
    for name, us in us_per_pass.items():
        tiling = [int(n) for n in name[1:].split("_")]
        tilings[name] = {"tiling": tiling, **({"error": "illegal memory access"} if us is None else {
            "shapes": {shape: {"finite": True, "max_diff": 0.0, "us_per_pass": us}
                       for shape in ("122 positions, with injection", "122 positions, no injection")}})}
    return {"device": "NVIDIA H100 80GB HBM3", "batch": 256, "reference": "64x64, 4 warps, 3 stages",
            "tilings": tilings}


def test_the_fused_path_goes_at_the_fastest_tiling_of_its_bench(tmp_path, monkeypatch):
    """`bench fused` before the fused bench: its fastest tiling (of those whose blocks are the
    reference's) is what the fused bench and the runs use, through the tiling variable."""
    from hrm_agent.models.fused import TILING_VAR

    job = _auto_job(tmp_path, monkeypatch, tilings=_tilings(
        t64_64_4_3_0_0=40.0, t64_64_4_1_128_0=25.0, t128_128_8_3_0_0=None))
    bench = {"ok": True, "result": {"fast_path_check": {"ok": True}, "paper-fourrooms": {
        "eager": {"optimizer_steps_per_s": 40.0}, "fast": {"optimizer_steps_per_s": 300.0}}}}
    seen = []
    monkeypatch.setattr(job, "benchmark", lambda profile, modes: seen.append(
        (modes, job.env.get(TILING_VAR))) or (
        bench if "eager" in modes else _fused_bench(fused=(True, 400.0), blocks=(True, 350.0))))
    assert job.choose_fast() is True and job.fused == "fused"
    assert seen == [(["eager", "fast"], None), (["fused-blocks", "fused"], "64,64,4,1,128,0")]
    assert job.info["tiling"] == (64, 64, 4, 1, 128, 0)
    assert "the fused blocks go at 64x64, 4 warps, 1 stage, 128 registers" in (
        tmp_path / "out" / "job.log").read_text()


def test_a_fused_bench_that_fails_at_the_chosen_tiling_falls_back_to_the_blocks_at_the_reference(
        tmp_path, monkeypatch):
    """The fallback is what an H100 trained on: the fused blocks alone, at the reference tiling."""
    from hrm_agent.models.fused import TILING_VAR

    job = _auto_job(tmp_path, monkeypatch, tilings=_tilings(t64_64_4_3_0_0=40.0, t128_64_8_1_128_0=25.0))
    bench = {"ok": True, "result": {"fast_path_check": {"ok": True}, "paper-fourrooms": {
        "eager": {"optimizer_steps_per_s": 40.0}, "fast": {"optimizer_steps_per_s": 300.0}}}}
    seen = []

    def benchmark(profile, modes):
        seen.append((modes, job.env.get(TILING_VAR)))
        if modes == ["eager", "fast"]:
            return bench
        return {"ok": False, "reason": "illegal memory access"} if TILING_VAR in job.env else (
            BLOCKS)

    monkeypatch.setattr(job, "benchmark", benchmark)
    assert job.choose_fast() is True and job.fused == "fused-blocks"
    assert seen == [(["eager", "fast"], None), (["fused-blocks", "fused"], "128,64,8,1,128,0"),
                    (["fused-blocks"], None)]
    assert job.info["tiling"] is None


def test_a_bench_of_the_tilings_stopped_at_its_deadline_keeps_the_tilings_it_timed(
        tmp_path, monkeypatch):
    from hrm_agent.bench import PARTIAL
    from hrm_agent.models.fused import TILING_VAR

    job = _auto_job(tmp_path, monkeypatch)
    timed = _tilings(t64_64_4_3_0_0=40.0, t64_64_4_1_168_0=30.0)
    monkeypatch.setattr(job, "subprocess", lambda cmd, timeout_s: {
        "ok": False, "reason": "timed out after 300 s",
        "stderr": f"{PARTIAL}{json.dumps(_tilings(t64_64_4_3_0_0=40.0))}\n{PARTIAL}{json.dumps(timed)}\n"})
    job.choose_tiling()
    assert job.env[TILING_VAR] == "64,64,4,1,168,0"
    assert job.info["bench_tilings"]["partial"] == timed


def test_a_failed_bench_of_the_tilings_leaves_the_reference_tiling(tmp_path, monkeypatch):
    from hrm_agent.models.fused import TILING_VAR

    job = _auto_job(tmp_path, monkeypatch)
    job.choose_tiling()
    assert TILING_VAR not in job.env and job.info["tiling"] is None
    log = (tmp_path / "out" / "job.log").read_text()
    assert "bench fused failed; the end of its output:\n    Traceback: ..." in log
    assert "the fused blocks go at the reference tiling" in log


def test_the_fastest_tiling_is_one_that_computes_the_reference_blocks():
    from hrm_agent.bench.fused import fastest_tiling

    result = _tilings(t64_64_4_3_0_0=40.0, t64_64_4_1_128_0=30.0, t64_64_4_1_168_0=20.0,
                      t32_64_4_3_0_0=10.0, t128_64_8_3_0_0=5.0, t128_128_8_3_0_0=None,
                      t64_64_8_1_128_0=1.0)
    shapes = result["tilings"]
    shapes["t64_64_8_1_128_0"]["error"] = "illegal memory access"  # at a shape after those timed
    next(iter(shapes["t32_64_4_3_0_0"]["shapes"].values()))["max_diff"] = 0.5  # other blocks
    next(iter(shapes["t128_64_8_3_0_0"]["shapes"].values()))["finite"] = False  # NaN
    del next(iter(shapes["t64_64_4_1_168_0"]["shapes"].values()))["us_per_pass"]  # not timed
    assert fastest_tiling(result) == (64, 64, 4, 1, 128, 0)
    assert fastest_tiling(None) is None
    assert fastest_tiling(_tilings(t128_128_8_3_0_0=None)) is None


H100 = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0+cu130", "triton": "3.6.0",
        "code": "0123456789abcdef"}


def _window(date, fast=True, bench=True, reused=None, error="", fused=False, **report):
    """A windows.jsonl line as gpu-import writes it, of a window on `report` (default: H100)."""
    window = {"date": date, "device": "cuda", "toy": False, "report": {**H100, **report},
              "fast": fast, "fused": fused,
              "runs": {"fourrooms-carry-z": {"state": "stopped", "error": error}}}
    if bench:
        window["bench"] = {"ok": True, "result": {"fast_path_check": {"ok": True}}}
    if reused:
        window["fast_verified_by"] = reused
    return window


@pytest.mark.parametrize("windows, flags, reused", [
    ([], {}, None),
    ([_window("12-01")], {}, "12-01"),
    ([_window("12-01"), _window("12-02", bench=False, reused="12-01")], {}, "12-02"),
    ([_window("12-01"), _window("12-02", torch="2.12.0+cu130")], {}, "12-01"),
    ([_window("12-01", gpu="NVIDIA H200")], {}, None),
    ([_window("12-01", torch="2.12.0+cu130")], {}, None),
    ([_window("12-01", code="fedcba9876543210")], {}, None),
    ([_window("12-01"), _window("12-02", fast=False)], {}, None),
    ([_window("12-01"), _window("12-02", error="RuntimeError: CUDA error")], {}, None),
    ([_window("12-01", bench=False)], {}, None),  # --fast on: trained fast, never measured
    ([_window("12-01")], {"fast": "bench"}, None),
    ([_window("12-01")], {"bench_maze": True}, None),
], ids=["no earlier window", "measured here", "reused here", "the last on this machine",
        "another GPU", "another torch", "other code", "last trained eager", "a run failed",
        "never measured", "--fast bench", "--bench-maze"])
def test_auto_skips_the_bench_after_a_window_on_the_same_gpu_torch_and_code_measured_it(
        tmp_path, monkeypatch, windows, flags, reused):
    carried = tmp_path / "gpu-runs"
    carried.mkdir()
    (carried / "windows.jsonl").write_text("".join(json.dumps(w) + "\n" for w in windows))
    job = _auto_job(tmp_path, monkeypatch, carried=carried, **flags)
    job.info["report"] = dict(H100, python="3.12.3")
    smoked, benched = [], []
    monkeypatch.setattr(job, "smoke", lambda: smoked.append(1) or {
        "ok": True, "wall_s": 1.0, "optimizer_steps_per_s": 40.0})
    equal_and_faster = {"ok": True, "result": {"fast_path_check": {"ok": True}, "paper-fourrooms": {
        "eager": {"optimizer_steps_per_s": 40.0}, "fast": {"optimizer_steps_per_s": 300.0}}}}
    monkeypatch.setattr(job, "benchmark", lambda profile, modes: benched.append(profile) or (
        equal_and_faster if "eager" in modes else {"ok": False, "reason": "no output"}))
    assert job.choose_fast() is True
    assert job.info.get("fast_verified_by") == reused
    assert not job.fused
    assert bool(smoked) == bool(benched) == (reused is None)  # that window ran this code here
    if reused:
        assert f"the window of {reused} found" in (tmp_path / "out" / "job.log").read_text()


def test_a_reused_verdict_keeps_its_choice_of_the_fused_blocks_and_their_tiling(tmp_path,
                                                                               monkeypatch):
    from hrm_agent.models.fused import TILING_VAR

    carried = tmp_path / "gpu-runs"
    carried.mkdir()
    window = dict(_window("12-01", fused="fused"), tiling=[64, 64, 4, 1, 128, 0])
    (carried / "windows.jsonl").write_text(json.dumps(window) + "\n")
    job = _auto_job(tmp_path, monkeypatch, carried=carried)
    job.info["report"] = dict(H100, python="3.12.3")
    monkeypatch.setattr(job, "benchmark", lambda profile, modes: pytest.fail("benched"))
    assert job.choose_fast() is True and job.fused == "fused"
    assert job.env[TILING_VAR] == "64,64,4,1,128,0"


@pytest.mark.parametrize("window, path", [
    (_window("12-01", fast=False), "eager"),
    (_window("12-01"), "fast"),
    (_window("12-02", bench=False, reused="12-01"), "fast, as measured on 12-01"),
    (_window("12-01", bench=False), "fast, unmeasured"),
    (_window("12-02", bench=False, reused="12-01", fused=True),  # as windows recorded it once
     "fast with the fused blocks, as measured on 12-01"),
    (_window("12-02", bench=False, reused="12-01", fused="fused"),
     "fast with the fused blocks, AdamATan2 and SwiGLU, as measured on 12-01"),
    # a window that recorded its modes' kernels is described by them, whatever they are now
    ({**_window("12-02", bench=False, reused="12-01", fused="fused"),
      "kernels": {"fused": "the fused blocks and a kernel since removed"}},
     "fast with the fused blocks and a kernel since removed, as measured on 12-01"),
    (_window("12-01", bench=False, fused="fused-blocks", error="illegal memory access"),
     "fast with the fused blocks, unmeasured; fourrooms-carry-z failed on it and was retried "
     "on a slower path"),
])
def test_the_runs_readme_says_how_each_window_trained(window, path):
    from hrm_agent.gpujob import _trained_on

    assert _trained_on(window) == path


@pytest.mark.parametrize("parallel, share", [(1, ", 70% training"), (2, ", 35% training")])
def test_the_runs_readme_says_what_share_of_each_window_trained(parallel, share):
    from hrm_agent.gpujob import _training_share

    run = {"step": 0, "start_step": 0, "optimizer_steps_per_s": None}  # skipped
    window = {"wall_s": 100.0, "parallel": parallel, "runs": {
        "a": {**run, "step": 1000, "optimizer_steps_per_s": 20.0},  # 50 s of training
        "b": {**run, "start_step": 500, "step": 700, "optimizer_steps_per_s": 10.0},  # 20 s
        "c": run}}
    assert _training_share(window) == share
    assert _training_share({**window, "runs": {"c": run}}) == ""


def test_the_code_hash_follows_the_training_modules_not_the_jobs_own(tmp_path, monkeypatch):
    import types

    from hrm_agent import gpujob
    from hrm_agent.gpujob import training_code

    def module(name, text):
        (tmp_path / f"{name}.py").write_text(text)
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(__file__=str(tmp_path / f"{name}.py")))

    module("hrm_agent.fake_layer", "x = 1")
    module("hrm_agent.bench.fake", "y = 1")
    before = training_code()
    module("hrm_agent.bench.fake", "y = 2")  # the job's own: a bench is not what a run executes
    assert training_code() == before
    module("hrm_agent.fake_layer", "x = 2")
    assert training_code() != before
    lazy = tmp_path / "lazy.py"  # a module the job does not import, as the fused blocks
    lazy.write_text("z = 1")
    monkeypatch.delitem(sys.modules, "hrm_agent.fake_lazy", raising=False)
    monkeypatch.setattr(gpujob, "LAZY", {"hrm_agent.fake_lazy": lazy})
    before = training_code()
    lazy.write_text("z = 2")
    assert training_code() != before and "hrm_agent.fake_lazy" not in sys.modules


def test_a_bench_stopped_by_its_timeout_keeps_what_it_measured(tmp_path, monkeypatch):
    from hrm_agent import gpujob
    from hrm_agent.bench import PARTIAL

    job = _auto_job(tmp_path, monkeypatch)
    measured = {"fast_path_check": {"ok": True}, "paper-fourrooms": {"eager": {"optimizer_steps_per_s": 40.0}}}
    stderr = f"compiling\n{PARTIAL}{{}}\n{PARTIAL}{json.dumps(measured)}\nstill compiling\n"

    given = []

    def timeout(cmd, **kwargs):  # as subprocess.run gives it: bytes, whatever `text` says
        given.append(kwargs["timeout"])
        raise gpujob.subprocess.TimeoutExpired(cmd, kwargs["timeout"], stderr=stderr.encode())

    monkeypatch.setattr(gpujob.subprocess, "run", timeout)
    assert job.choose_fast() is False  # no verdict: the runs train eager
    bench = job.info["bench"]
    assert 55 < given[0] <= 60  # the job's 1-minute budget, not BENCH_TIMEOUT_S: no run past it
    assert bench == {"ok": False, "reason": f"timed out after {given[0]:.0f} s", "partial": measured}
    assert json.loads((tmp_path / "out" / "job.json").read_text())["bench"] == bench
    assert "    still compiling" in (tmp_path / "out" / "job.log").read_text()


def test_a_bench_is_not_started_without_time_left_in_the_budget(tmp_path, monkeypatch):
    from hrm_agent import gpujob

    job = _auto_job(tmp_path, monkeypatch)
    job.end = time.monotonic() + gpujob.MIN_RUN_S - 1  # (a first bench took the window)
    monkeypatch.setattr(gpujob.subprocess, "run", lambda *args, **kwargs: pytest.fail("ran"))
    assert job.benchmark("paper-maze", ["eager"]) == {"ok": False, "reason": "skipped, no time left in the budget"}


def test_a_failed_bench_leaves_its_traceback_in_the_job_log(tmp_path, monkeypatch):
    """job.log comes back from a window: the next session debugs a fast path from it."""
    from hrm_agent import gpujob

    job = _auto_job(tmp_path, monkeypatch)
    frames = [f'  File "hrm_agent/graphs.py", line {n}, in _capture' for n in range(40)]
    stderr = "\n".join(["Traceback (most recent call last):", *frames,
                        "RuntimeError: operation not permitted when stream is capturing"])
    monkeypatch.setattr(gpujob.subprocess, "run", lambda cmd, **kwargs: subprocess.CompletedProcess(
        cmd, 1, stdout="", stderr=stderr))
    assert job.choose_fast() is False
    log = (tmp_path / "out" / "job.log").read_text()
    assert job.info["bench"]["reason"] == "RuntimeError: operation not permitted when stream is capturing"
    assert "failed; the end of its output:" in log
    assert frames[-29] in log and frames[-30] not in log  # the last 30 lines, no more


def test_a_failure_deep_in_torch_is_logged_with_the_frames_of_ours_that_led_there(tmp_path):
    """A CUDA error surfaces 30 frames into torch: the end of the output alone does not say
    whether acting or learning, a warm-up call or the capture, ran into it."""
    from hrm_agent.bench import error_line
    from hrm_agent.gpujob import Log

    torch_frames = [f'  File "/opt/torch/lib/torch/_ops.py", line {n}, in __call__\n'
                    f'    return self._op(*args, **kwargs)\n           ^^^^^^^^^^^^^^^' for n in range(40)]
    output = "\n".join([
        "step 256 loss 2.1",
        "Traceback (most recent call last):",  # an earlier, chained exception: not this failure's
        '  File "/repo/hrm_agent/checkpoint.py", line 9, in load', "    raise KeyError(name)",
        "KeyError: 'x'", "", "During handling of the above exception, another exception occurred:",
        "", "Traceback (most recent call last):",
        '  File "/repo/hrm_agent/trainer.py", line 290, in learn', "    loss_sum = self.learn_minibatch(batch)",
        "               ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        '  File "/repo/hrm_agent/graphs.py", line 66, in _capture',
        "    self.static_out = self.fn(*self.static_args)",
        '  File "<eval_with_key>.3", line 5, in forward',
        *torch_frames, "torch.AcceleratorError: CUDA error: an illegal memory access was encountered",
        "For debugging consider passing CUDA_LAUNCH_BLOCKING=1",
        "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions."])
    # the error that job.json keeps: the line that names it, not torch's advice after it
    assert error_line(output) == ("torch.AcceleratorError: CUDA error: an illegal memory access "
                                  "was encountered")
    assert error_line("exit 2: no traceback\n") == "exit 2: no traceback"
    Log(tmp_path / "job.log").tail("run: train.log", output)
    log = (tmp_path / "job.log").read_text()
    ours, end = log.split("and the end of its output:")
    assert ours.splitlines()[1:] == [
        '    File "/repo/hrm_agent/trainer.py", line 290, in learn',
        "      loss_sum = self.learn_minibatch(batch)",
        '    File "/repo/hrm_agent/graphs.py", line 66, in _capture',
        "      self.static_out = self.fn(*self.static_args)"]
    assert end.strip().endswith("to enable device-side assertions.")
    Log(tmp_path / "plain.log").tail("bench", "exit 2: no traceback")
    assert "bench; the end of its output:\n    exit 2: no traceback" in (tmp_path / "plain.log").read_text()


def test_the_runs_readme_counts_the_windows_a_run_trained_in_not_those_that_skipped_it(tmp_path):
    """A window with no time left for a run lists it at its carried step, untrained."""
    from hrm_agent.gpujob import history_markdown

    def window(step, wall_s):
        run = {"step": step, "start_step": 0, "wall_s": wall_s, "optimizer_steps_per_s": 100.0}
        return json.dumps({"date": "2026-12-01", "report": {}, "runs": {RUNS[0]: run}})

    (tmp_path / "windows.jsonl").write_text("\n".join(
        [window(1000, 20.0), window(3000, 40.0), window(3000, 0.0), window(3000, 0.0)]) + "\n")
    (tmp_path / RUNS[0]).mkdir()
    (tmp_path / RUNS[0] / METRICS).write_text("")
    assert f"| `{RUNS[0]}` | 2 | 3,000 | 1.0 | 100.0 | - |" in history_markdown(tmp_path)


def test_the_runs_readme_reports_each_windows_bench_and_the_busiest_kernels():
    from hrm_agent.gpujob import bench_markdown

    kernels = {"ms_per_step": 3.2, "busy": 0.8, "kernels_per_step": 1234.5, "top": [
        {"name": "triton_fused_rms_norm", "calls_per_step": 88.0, "ms_per_step": 1.1, "share": 0.34}]}
    fast = {"optimizer_steps_per_s": 260.0, "effective_GBps": 1500.0,
            "fraction_of_copy_roofline": 0.6, "kernels": kernels}
    windows = [
        {"date": "2026-12-01", "fused": "fused", "bench": {"ok": True, "result": {
            "device": "NVIDIA H100", "fast_path_check": {"ok": True},
            "paper-fourrooms": {"eager": {"optimizer_steps_per_s": 40.0}, "fast": fast}}},
         "bench_fused": {"ok": True, "result": {"device": "NVIDIA H100", "fused_check": {"ok": True},
                         "paper-fourrooms": {"fused": {"optimizer_steps_per_s": 390.0}}}}},
        {"date": "2026-12-02", "bench": {"ok": False, "reason": "timed out after 360 s", "partial": {
            "device": "NVIDIA H200", "fast_path_check": {"ok": False},
            "paper-fourrooms": {"eager": {"optimizer_steps_per_s": 45.0}}}}},
        {"date": "2026-12-03", "bench": {"ok": False, "reason": "no output"}},  # nothing measured
    ]
    text = "\n".join(bench_markdown(windows))
    assert ("| 2026-12-01 | NVIDIA H100 | paper-fourrooms | 40.0 | 260.0 | 390.0 | 6.5x | 1500.0 (0.60) "
            "| 0.8 | ok, ok |") in text
    assert ("| 2026-12-02 | NVIDIA H200 | paper-fourrooms (stopped: timed out after 360 s) | 45.0 | - "
            "| - | - | - | - | FAILED, - |") in text
    assert "2026-12-03" not in text
    assert ("Busiest kernels of the fast path, paper-fourrooms, 2026-12-01 (3.2 ms of kernel "
            "time, 1,234.5 kernels per optimizer step)") in text
    assert "| `triton_fused_rms_norm` | 88.0 | 1.1 | 34.0% |" in text
    assert bench_markdown([{"date": "2026-12-04"}]) == []  # a window that ran no bench
    # where the fused mode was profiled too, its kernels are the ones shown (it trains)
    fused = windows[0]["bench_fused"]["result"]["paper-fourrooms"]["fused"]
    fused["kernels"] = {"ms_per_step": 2.0, "busy": 0.9, "top": [
        {"name": "_block_kernel", "calls_per_step": 64.0, "ms_per_step": 1.0, "share": 0.5}]}
    text = "\n".join(bench_markdown(windows))
    assert ("Busiest kernels of the fast path with the fused blocks, AdamATan2 and SwiGLU, "
            "paper-fourrooms, 2026-12-01") in text
    del windows[0]["fused"]  # a window of before the modes had names: "fused" was the blocks
    assert "fast path with the fused blocks, paper-fourrooms" in "\n".join(bench_markdown(windows))
    assert "| `_block_kernel` | 64.0 | 1.0 | 50.0% |" in text and "triton_fused_rms_norm" not in text
    # the fallback, the fused blocks alone, is marked as such
    windows[0]["bench_fused"]["result"] = {"device": "NVIDIA H100", "fused-blocks_check": {"ok": True},
                                           "paper-fourrooms": {"fused-blocks": fused}}
    text = "\n".join(bench_markdown(windows))
    assert "| 260.0 | 390.0 (fused-blocks) | 6.5x |" in text and "| ok, ok (fused-blocks) |" in text
    assert "Busiest kernels of the fast path with the fused blocks, paper-fourrooms" in text


def test_the_runs_readme_shows_the_last_windows_tilings_and_the_one_trained_at():
    from hrm_agent.gpujob import tilings_markdown

    result = _tilings(t64_64_4_3_0_0=40.0, t64_64_4_1_128_0=25.0, t128_128_8_3_0_0=None,
                      t64_64_8_1_128_0=20.0)
    partial = result["tilings"]["t64_64_8_1_128_0"]  # timed at one shape, then it faulted
    partial["shapes"].pop("122 positions, no injection")
    partial.update(error="illegal memory access", at="122 positions, no injection")
    windows = [{"date": "2026-12-01", "bench_tilings": {"ok": True, "result": result},
                "tiling": [64, 64, 4, 1, 128, 0]}, {"date": "2026-12-02"}]
    text = "\n".join(tilings_markdown(windows))
    assert "(`bench fused`, 2026-12-01, NVIDIA H100 80GB HBM3, batch 256)" in text
    assert "Trained at: 64x64, 4 warps, 1 stage, 128 registers." in text
    assert "| t64_64_4_1_128_0 | 25.0 | 25.0 | 0 |" in text
    assert "| t128_128_8_3_0_0 | - | - | illegal memory access |" in text
    assert ("| t64_64_8_1_128_0 | 20.0 | - | illegal memory access (at: 122 positions, no "
            "injection) |") in text
    assert tilings_markdown([{"date": "2026-12-02"}]) == []
    # every tiling failed (as on an H100, 2026-11-27): a table of two columns, and where each failed
    for entry in result["tilings"].values():
        entry.pop("shapes", None)
        entry.update(error="illegal memory access", at="122 positions, with injection")
    table = [line for line in tilings_markdown(windows) if line.startswith("|")]
    assert {line.count("|") for line in table} == {3}, table
    assert ("| t64_64_4_1_128_0 | illegal memory access (at: 122 positions, with injection) |"
            in table)


def test_bench_maze_measures_the_maze_too_and_the_decision_stays_four_rooms(tmp_path, monkeypatch):
    job = _auto_job(tmp_path, monkeypatch, bench_maze=True)
    rates = {"paper-fourrooms": (40.0, 300.0), "paper-maze": (40.0, 30.0)}  # eager, fast
    results = {name: {"ok": True, "result": {"fast_path_check": {"ok": True}, name: {
        "eager": {"optimizer_steps_per_s": eager}, "fast": {"optimizer_steps_per_s": fast}}}}
        for name, (eager, fast) in rates.items()}
    asked = []
    monkeypatch.setattr(job, "benchmark", lambda profile, modes: asked.append((profile, modes)) or (
        results[profile] if "eager" in modes else {"ok": False, "reason": "no output"}))
    assert job.choose_fast() is True  # the maze's slower fast path does not decide
    assert asked == [("paper-fourrooms", ["eager", "fast"]), ("paper-maze", ["eager", "fast", "fused"]),
                     ("paper-fourrooms", ["fused-blocks", "fused"]), ("paper-fourrooms", ["fused-blocks"])]
    assert job.info["bench"] is results["paper-fourrooms"] and job.info["bench_maze"] is results["paper-maze"]


@pytest.mark.parametrize("fast, together", [(True, False), (False, True)],
                         ids=["fast: one at a time", "eager: all at once"])
def test_the_queue_runs_in_priority_order_and_a_finished_run_hands_its_place_on(
        tmp_path, monkeypatch, fast, together):
    """By default a graphed run has the GPU to itself, and the first unfinished run gets the
    whole window; eager runs go all at once. Processes faked: one finishes early (its total
    steps done), the others train until SIGTERM at the deadline."""
    import hrm_agent.gpujob as gpujob
    from hrm_agent.gpujob import Job

    names = ["fourrooms-carry-z", "fourrooms-reset-z", "maze-carry-z"]
    polls_to_finish = dict(zip(names, [3, 10**9, 10**9]))
    alive_at_launch = {}

    class Process:
        live: list = []

        def __init__(self, cmd, **kwargs):
            self.name, self.pid, self.code = Path(cmd[cmd.index("--out") + 1]).name, 0, None
            self.polls = polls_to_finish[self.name]
            alive_at_launch[self.name] = [p.name for p in Process.live if p.code is None]
            Process.live.append(self)

        def poll(self):
            self.polls -= 1
            if self.code is None and self.polls <= 0:
                self.code = 0
            return self.code

        def send_signal(self, signum):  # the trainer checkpoints and exits
            self.code = 0

        kill = send_signal

    monkeypatch.setattr(gpujob, "POLL_S", 0.01)
    monkeypatch.setattr(gpujob, "MIN_RUN_S", 0.0)
    monkeypatch.setattr(gpujob, "STOP_S", 0.0)
    monkeypatch.setattr(gpujob, "GRACE_S", 0.0)
    (tmp_path / "out").mkdir()
    job = Job(tmp_path / "out", tmp_path / "work", names, minutes=1.0, parallel=0,
              carried=None, toy=True, fast="auto", device="cuda")
    monkeypatch.setattr(gpujob.subprocess, "Popen", Process)  # (the report ran real ones)
    job.end = time.monotonic() + 0.5
    job.train(fast)
    states = {run.name: run.state for run in job.runs}
    if together:
        assert job.info["parallel"] == 3 and alive_at_launch == dict(zip(names, [[], names[:1], names[:2]]))
        assert set(states.values()) == {"done"}
    else:  # the second starts when the first has finished; the third finds no time left
        assert job.info["parallel"] == 1 and alive_at_launch == dict(zip(names[:2], [[], []]))
        assert states == dict(zip(names, ["done", "done", "skipped"]))


def test_the_runs_train_until_shortly_before_the_budgets_end(tmp_path, monkeypatch):
    """SIGTERM comes STOP_S (10 s) before the end: a run checkpoints within seconds of it, and the
    grace before a kill lies past the end, not inside the window's training time."""
    import hrm_agent.gpujob as gpujob

    job = _auto_job(tmp_path, monkeypatch)
    deadlines = []

    def launch(run, fast, deadline, fused):  # a run that ends at once
        deadlines.append(deadline)
        run.state, run.started, run.process = "running", time.monotonic(), SimpleNamespace(poll=lambda: 0)

    monkeypatch.setattr(job, "launch", launch)
    job.train(fast=True)
    assert deadlines == [job.end - gpujob.STOP_S] and gpujob.STOP_S < gpujob.GRACE_S


@pytest.mark.parametrize("device, dtype", [("cuda", "bfloat16"), ("cpu", "auto")])
def test_an_agent_trained_on_cuda_is_exported_in_the_dtype_it_trained_in(tmp_path, device, dtype):
    from hrm_agent.trainer import Trainer, load_agent
    from tests.conftest import tiny_config

    run = "fourrooms-carry-z"
    agent = Trainer(tiny_config()).agent_state()
    val = {"kind": "val", "step": 8, "success_rate": 0.5, "mean_episode_length": 9.0}
    agent["last_val"] = val
    summary = {"state": "done", "resumed": False, "wall_s": 1.0, "start_step": 0, "step": 8,
               "optimizer_steps_per_s": 8.0, "last_val": val, "error": ""}
    src = tmp_path / "out"
    src.mkdir()
    (src / "job.json").write_text(json.dumps({"report": {}, "device": device, "runs": {run: summary}}))
    (src / METRICS).write_text(json.dumps({"run": run, **val}) + "\n")
    torch.save({"agents": {run: agent}}, src / "best.pt")
    import_window(src, tmp_path / "gpu-runs", tmp_path / "agents")
    model, config = load_agent(tmp_path / "agents" / run / "agent.pt")
    assert config.model.dtype == dtype
    assert model.compute_dtype() == (torch.bfloat16 if device == "cuda" else torch.float32)


def test_by_default_the_run_with_the_fewest_steps_goes_first(tmp_path, monkeypatch):
    """A window trains the run furthest behind, so windows bring all four runs along (the
    paper compares them) rather than one to its 200K steps; `--runs` keeps its own order."""
    from hrm_agent.gpujob import RUNS, Job, Run

    steps = dict(zip(RUNS, (54_552, 0, 9_000, 0)))
    monkeypatch.setattr(Job, "_prepare", lambda self, name: Run(
        name, tmp_path / name, resumed=steps[name] > 0, start_step=steps[name]))
    monkeypatch.setattr(Job, "run", lambda self: [run.name for run in self.runs])
    assert gpu_job(tmp_path / "a", device="cpu", toy=True) == [
        "fourrooms-reset-z", "maze-reset-z", "maze-carry-z", "fourrooms-carry-z"]
    assert gpu_job(tmp_path / "b", device="cpu", toy=True, runs=list(RUNS)) == list(RUNS)


def _fake_ptxas(tmp_path, version="13.1.80"):
    """An executable that answers --version as ptxas does, and an .xz of it."""
    import lzma

    script = ("#!/bin/sh\necho 'ptxas: NVIDIA (R) Ptx optimizing assembler'\n"
              f"echo 'Cuda compilation tools, release {version[:4]}, V{version}'\n")
    (tmp_path / "ptxas.xz").write_bytes(lzma.compress(script.encode()))
    return tmp_path / "ptxas.xz"


@pytest.mark.parametrize("check_passes", [True, False])
def test_a_given_ptxas_compiles_from_then_on_only_if_it_runs_the_block_kernel(
        tmp_path, monkeypatch, check_passes):
    """`--ptxas`: unpacked from its .xz and checked on the block kernel before anything else
    compiles; one that fails its check (or is no ptxas) leaves Triton its own, and says why."""
    from hrm_agent.gpujob import PTXAS_VAR

    job = _auto_job(tmp_path, monkeypatch)
    seen = []

    def check(cmd, timeout_s):
        seen.append((cmd[1:3], cmd[-2:], job.env.get(PTXAS_VAR)))
        row = json.dumps({"122 positions, with injection": {"max_diff": 0.0, "finite": True}})
        return ({"ok": True, "stdout": row + "\n"} if check_passes else
                {"ok": False, "reason": "RuntimeError: CUDA error: an illegal memory access",
                 "stderr": "Traceback ..."})

    monkeypatch.setattr(job, "subprocess", check)
    own = job.info["report"]["ptxas"]
    job.use_ptxas(_fake_ptxas(tmp_path))
    unpacked = str(tmp_path / "work" / "ptxas")
    assert seen == [(["-m", "hrm_agent.bench.fused"], ["4", "check"], unpacked)]
    assert job.info["ptxas"]["version"] == "13.1.80"
    log = (tmp_path / "out" / "job.log").read_text()
    if check_passes:
        assert job.env[PTXAS_VAR] == unpacked and job.info["report"]["ptxas"] == "13.1.80"
        assert "Triton compiles with ptxas 13.1.80" in log
    else:
        assert PTXAS_VAR not in job.env and job.info["report"]["ptxas"] == own
        assert "failed its check (RuntimeError: CUDA error: an illegal memory access)" in log

    (tmp_path / "not-ptxas").write_text("#!/bin/sh\necho hello\n")
    (tmp_path / "not-ptxas").chmod(0o755)
    job.env.pop(PTXAS_VAR, None)
    job.use_ptxas(tmp_path / "not-ptxas")
    assert PTXAS_VAR not in job.env and "says no ptxas version" in job.info["ptxas"]["error"]
    with pytest.raises(ValueError, match="--ptxas .*missing.xz is not a file"):
        gpu_job(tmp_path / "o5", device="cpu", toy=True, ptxas=tmp_path / "missing.xz")
    with pytest.raises(ValueError, match="--ptxas is for a GPU window"):
        gpu_job(tmp_path / "o6", device="cpu", toy=True, ptxas=tmp_path / "ptxas.xz")


def test_a_reference_tiling_that_faults_runs_again_under_compute_sanitizer(tmp_path, monkeypatch):
    """Where the GPU machine has CUDA's compute-sanitizer, a fault of the reference tiling in
    `bench fused` comes back with memcheck's report of it: which kernel, which access."""
    import hrm_agent.gpujob as gpujob
    from hrm_agent.bench.fused import tiling_name
    from hrm_agent.models.fused import TILING

    job = _auto_job(tmp_path, monkeypatch)
    calls = []

    def memcheck(cmd, timeout_s):
        calls.append(cmd)
        Path(cmd[cmd.index("--log-file") + 1]).write_text(
            "========= COMPUTE-SANITIZER\n========= Invalid __shared__ read of size 16 bytes\n"
            "=========     at _block_kernel+0x1c30\n=========\n")
        return {"ok": False, "reason": "RuntimeError: CUDA error: an illegal memory access"}

    monkeypatch.setattr(job, "subprocess", memcheck)
    monkeypatch.setattr(gpujob.shutil, "which", lambda name: f"/cuda/bin/{name}")
    job.end = time.monotonic() + 600  # a window with minutes to spare
    reference = {"tiling": list(TILING), "shapes": {}}
    job.sanitize({"batch": 256, "tilings": {tiling_name(TILING): reference}})
    assert calls == [] and "sanitizer" not in job.info  # it ran: nothing to look into

    reference["error"] = "RuntimeError: CUDA error: an illegal memory access was encountered"
    job.sanitize({"batch": 256, "tilings": {tiling_name(TILING): reference}})
    assert calls[0][:3] == ["/cuda/bin/compute-sanitizer", "--tool", "memcheck"]
    assert calls[0][-9:] == ["hrm_agent.bench.fused", *map(str, TILING), "256", "check"]
    assert job.info["sanitizer"]["report"] == [
        "========= COMPUTE-SANITIZER", "========= Invalid __shared__ read of size 16 bytes",
        "=========     at _block_kernel+0x1c30"]
    assert "Invalid __shared__ read" in (tmp_path / "out" / "job.log").read_text()
