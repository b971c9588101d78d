"""The GPU training job: one command that turns a short, rare GPU window into trained agents.

`python3 -m hrm_agent gpu-job --out $OUT --from pretrained/gpu-runs`, run from the repo root
with the machine's own python3 (torch, numpy and tqdm are all it needs), does in one go:
1. report: GPU, torch, triton, whether triton has a C compiler, and its ptxas (`--ptxas`: a
   newer one, if it builds and runs the block kernel here);
2. smoke: a few optimizer steps of the paper profile in a subprocess (eager), then
   `bench train --quick` on paper-fourrooms, eager, fast (torch.compile + CUDA graphs) and
   fused (fast, with our Triton kernels: the HRM's gradient-free blocks, AdamATan2, and the
   SwiGLU's hidden layer where gradient flows); the fast path is kept only if it runs, trains
   a small fp32 run exactly as the eager path does, and is faster, and the fused one only if
   it passes the same check and is faster still.
   Before the fused bench, `bench fused` times the block kernel's tilings, and our kernels go
   at the fastest that computes the reference tiling's blocks. The fused bench measures the
   block kernels alone ("fused-blocks"), then all of them ("fused"), keeping what it measured
   should it die, and the faster that passes the check trains; should both fail,
   "fused-blocks" once more at the reference tiling, as an H100 trained on them
   (`--bench-maze`: paper-maze too, for the record, ~2 more minutes).
   A window skips both, and gives their minutes to training, when the last window on the
   same GPU, torch, triton, ptxas and training code (`windows.jsonl` in `--from`) trained on a
   measured fast path without a failure; `--fast bench` measures anew;
3. the queue, the run with the fewest optimizer steps so far first (ties in `RUNS` order; or
   as `--runs` orders them), so that windows bring all four runs along, not one to its end:
   each an ordinary `hrm_agent train` run in a local
   work folder, resumed from `--from` when that holds its checkpoint, and stopped by SIGTERM
   at the window's deadline (the trainer then checkpoints at once). `--parallel` runs go at
   once; a run that ends early (its total steps done) hands its place to the next. By default
   that is one at a time on the fast path, so the first unfinished run gets the whole GPU
   (a CUDA-graphed run keeps the GPU busy by itself, and a GPU time-slices between processes:
   four at once would each go at a quarter of the speed, and none would be trained first), and
   all at once on the eager path, where each process leaves the GPU idle between its kernel
   launches. A run whose path fails is restarted a step down from its last checkpoint: all
   our kernels, the fused blocks alone (if they passed their check; each kernel checked, so
   that a fault names the kernel: `fused.CHECK_VAR`), the fast path, eager.
While the runs go, everything that must come back is mirrored into `--out`, each file replaced
atomically, as at most 8 flat files (the GPU machine's return limits): `<run>.pt` (resumable
checkpoint, no replay), `metrics.jsonl` (every run's records, tagged with `run`), `best.pt`
(each run's best validated agent), `job.log` and `job.json` (report, smoke, per-run summary).
A job killed at any moment leaves the last mirrored checkpoints whole. `hrm_agent gpu-import`
files what came back into the repo (`pretrained/gpu-runs/`).
"""
from __future__ import annotations

import glob
import hashlib
import json
import lzma
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hrm_agent.bench import error_line, last_partial
from hrm_agent.checkpoint import CheckpointError, config_diff, load_checkpoint, save_checkpoint
from hrm_agent.experiment import load_profile
from hrm_agent.trainer import (BEST, CHECKPOINT, CONFIG, EXTENDABLE, METRICS, PATHS, _better,
                               agent_state, read_records, triton_c_compiler, write_config)

# The two conditions as the authors ran them (paper-notes §3.3): under Carry Z each env explores
# by its own coin; under Reset Z one coin says whether the whole batch acts at random, and then
# the model does not run (at the paper's ε, 1.0 to 0.56 over a run, most collection steps).
CARRY_Z = ["train.carry_z=true"]
RESET_Z = ["train.carry_z=false", "train.eps_mode='batch'"]
# run name -> (profile, condition); the queue's order among runs of as many steps
RUNS = {"fourrooms-carry-z": ("paper-fourrooms", CARRY_Z),
        "fourrooms-reset-z": ("paper-fourrooms", RESET_Z),
        "maze-carry-z": ("paper-maze", CARRY_Z), "maze-reset-z": ("paper-maze", RESET_Z)}
# Fresh runs checkpoint every 1,000 steps, so a window cut short loses little, and validate at
# the paper profile's cadence, every 5,000 (the paper: ~5.5K). A validation of an untrained
# agent (256 episodes of 80 steps, 8 segments each) costs the compute of 150-200 optimizer
# steps; on an H100 one took ~10 s before it replayed the acting graph (`Trainer.validate`).
JOB_SETTINGS = ["train.checkpoint_interval=1000", "train.log_interval=250"]
# `--toy`: the paper's structure at a size a CPU runs in seconds (the dry run in the tests).
TOY = ["model.hidden_size=32", "model.H_layers=1", "model.L_layers=1", "model.segments=2",
       "env.num_envs=8", "env.max_steps=20", "train.batch_size=16", "train.buffer_capacity=4096",
       "train.learning_starts=16", "train.val_episodes=16", "train.val_interval=8",
       "train.checkpoint_interval=8", "train.log_interval=8"]
# `bench train --quick` of one paper profile compiles it cold (the paper segment took ~80 s on a
# 2-core CPU), after the small fast-path check: minutes. A bench stopped here loses its verdict
# (the runs train eager) and keeps only the measurements it finished (`last_partial`). Nor may a
# bench run past the window's budget (`--bench-maze` adds a second): the machine's limit on a
# command would kill the whole job, before its job.json is written.
BENCH_TIMEOUT_S = 360
# The modes of `PATHS` with our kernels, and what they run, in the order the job benches them:
# the fused blocks alone first (an H100 trained on them), so that a newer kernel which breaks
# its process cannot take their measurement with it.
FUSED = {"fused-blocks": "the fused blocks",
         "fused": "the fused blocks, AdamATan2 and SwiGLU"}
TILINGS_TIMEOUT_S = 300  # `bench fused`: its tilings compile in parallel, then ~10 s each
# `--ptxas`: Triton 3.6 builds every kernel (ours and inductor's) with the ptxas it bundles, CUDA
# 12.8's. On an H100 our block kernel faulted where it had run before (every tiling of `bench
# fused`, Reset Z's first learn steps; 2026-11-27), as kernels of many dependent wgmma dots have
# under ptxas 12.8 and not 13.1 (flash-linear-attention#1262, triton#11366). `make ptxas` puts
# CUDA 13.1's ptxas (PyPI's nvidia-cuda-nvcc) in .ptxas/, xz-compressed, for a window to carry.
PTXAS_VAR = "TRITON_PTXAS_PATH"
PTXAS_CHECK_TIMEOUT_S = 180  # compiles the block kernel's four variants, then runs them
# Should the reference tiling fail in `bench fused`, its process runs once more under CUDA's
# compute-sanitizer (memcheck), where the machine has one: its first reports name the kernel
# and the access that went out of bounds, and of which memory (global or shared).
SANITIZER_TIMEOUT_S = 150
SANITIZER_LINES = 40  # of its report, into job.json
MIN_RUN_S = 30  # a run starts (or, its path failed, restarts a step down) only with this much time left
# The runs get SIGTERM STOP_S before the budget's end (a paper run checkpointed and exited within
# ~5 s of it on an H100), and one still going GRACE_S after that is killed: a job overruns its
# budget by 35 s at most, which the default 8.5 minutes leave within a 10-minute command.
STOP_S = 10
GRACE_S = 45
POLL_S = 2.0
TAIL_LINES = 30  # of a failed subprocess's output, into job.log
JOB_OWN = ("hrm_agent.gpujob", "hrm_agent.cli", "hrm_agent.__main__", "hrm_agent.bench")


class JobError(ValueError):
    """The job cannot start: no CUDA device, a used output folder, a carried checkpoint that
    does not fit its run."""


def run_overrides(name: str, toy: bool) -> list[str]:
    return [*RUNS[name][1], *JOB_SETTINGS, *(TOY if toy else [])]


def report() -> dict[str, Any]:
    """What this machine offers: the GPU, torch, and whether triton can compile (it needs a C
    compiler for its launchers; without one the runs train without torch.compile)."""
    info: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count)
    try:
        import triton
    except ImportError:
        info["triton"] = None
    else:
        info["triton"] = triton.__version__
        try:  # the ptxas it compiles with: its own, or $TRITON_PTXAS_PATH's
            info["ptxas"] = ptxas_version(triton.knobs.nvidia.ptxas.path)
        except (AttributeError, RuntimeError):  # a Triton without NVIDIA's backend
            info["ptxas"] = None
    info["c_compiler"] = triton_c_compiler()
    info["code"] = training_code()
    return info


def ptxas_version(path: str | Path) -> str:
    """The full version of the ptxas at `path` ("12.8.93"); a RuntimeError if it will not say."""
    try:
        proc = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{path} does not run: {exc}") from None
    found = re.search(r"release [\d.]+, V([\d.]+)", proc.stdout)
    if proc.returncode or not found:
        said = (proc.stdout + proc.stderr)[-200:]
        raise RuntimeError(f"{path} --version says no ptxas version: {said!r}")
    return found.group(1)


# Training code the job's process never imports (a run imports it when it asks for it).
LAZY = {"hrm_agent.models.fused": Path(__file__).parent / "models" / "fused.py",
        "hrm_agent.models.fused_swiglu": Path(__file__).parent / "models" / "fused_swiglu.py",
        "hrm_agent.fused_optim": Path(__file__).parent / "fused_optim.py"}


def training_code() -> str:
    """A hash of the package's loaded modules but the job's own, and of `LAZY` (the code a run
    executes): a fast-path verdict holds for the code it was measured on, and no other."""
    files = {name: getattr(module, "__file__", None) for name, module in sys.modules.items()}
    files.update({name: str(path) for name, path in LAZY.items() if not files.get(name)})
    digest = hashlib.sha256()
    for name, file in sorted(files.items()):
        if name.split(".")[0] == "hrm_agent" and file and not name.startswith(JOB_OWN):
            digest.update(name.encode() + Path(file).read_bytes())
    return digest.hexdigest()[:16]


class Log:
    """Lines to stdout and to `job.log`, each flushed at once (a kill loses nothing written)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")

    def tail(self, what: str, output: str, lines: int = TAIL_LINES) -> None:
        """The last `lines` lines of a failed subprocess's `output`, after its traceback's frames
        in this package (`our_frames`): job.log is what comes back of a window, and a traceback
        in it is what the next session fixes the failure from."""
        last = output.strip().splitlines()[-lines:] or ["(no output)"]
        ours = our_frames(output)
        self(f"{what}; " + (f"its traceback in hrm_agent:\n{_indent(ours)}\nand " if ours else "")
             + f"the end of its output:\n{_indent(last)}")


def _indent(lines: list[str]) -> str:
    return "\n".join("    " + line[:300] for line in lines)


def our_frames(output: str) -> list[str]:
    """The frames of the last traceback in `output` that lie in this package, each with its
    source line: where a failure raised deep inside torch came from (the end of the output
    shows torch's frames only), e.g. acting or learning, a warm-up call or the capture."""
    lines = output.splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("Traceback")), default=None)
    if start is None:
        return []
    frames, ours = [], False
    for line in lines[start + 1:]:
        if line.lstrip().startswith('File "'):
            ours = f"{os.sep}hrm_agent{os.sep}" in line
            if ours:
                frames.append(line.strip())
        elif ours and line.startswith("    ") and line.strip().strip("^~ "):
            frames.append("  " + line.strip())
            ours = False
        elif not line.startswith(" "):
            ours = False
    return frames


def atomic_write(path: Path, write) -> None:
    """`write(tmp_path)` then rename over `path`: a reader (or a kill) never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def train_command(run_dir: Path, name: str, resume: bool, overrides: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "hrm_agent", "train", "--out", str(run_dir), "--no-progress"]
    cmd += ["--resume"] if resume else ["--profile", RUNS[name][0], "--overwrite"]
    for override in overrides:
        cmd += ["--set", override]
    return cmd


@dataclass
class Run:
    name: str
    dir: Path
    resumed: bool
    start_step: int = 0
    process: subprocess.Popen | None = None
    deadline: float = math.inf
    state: str = "queued"  # queued, running, stopping, done, failed
    fast: bool = False  # launched on the fast path
    fused: str = ""  # ... with our kernels: a mode of `FUSED`
    seen: dict[str, int] = field(default_factory=dict)  # file -> mtime_ns mirrored
    records: list[dict] = field(default_factory=list)
    started: float = 0.0
    wall_s: float = 0.0
    error: str = ""

    def summary(self) -> dict[str, Any]:
        train = [r for r in self.records if r.get("kind") == "train"]
        vals = [r for r in self.records if r.get("kind") == "val"]
        return {"state": self.state, "resumed": self.resumed, "wall_s": round(self.wall_s, 1),
                "start_step": self.start_step,
                "step": max((r["step"] for r in self.records), default=0),
                "optimizer_steps_per_s": train[-1]["optimizer_steps_per_s"] if train else None,
                "last_val": vals[-1] if vals else None, "error": self.error}


class Job:
    def __init__(self, out: Path, work: Path, runs: list[str], *, minutes: float, parallel: int,
                 carried: Path | None, toy: bool, fast: str, device: str, bench_maze: bool = False,
                 fewest_steps_first: bool = False, ptxas: Path | None = None):
        self.out, self.work, self.toy, self.ptxas = out, work, toy, ptxas
        self.started = time.monotonic()
        self.end = self.started + 60 * minutes
        self.parallel, self.fast, self.device, self.bench_maze = parallel, fast, device, bench_maze
        self.fused = ""  # the fast path with our kernels (a mode of `FUSED`), by the bench's verdict
        # whether a run that fails on all our kernels steps down to the fused blocks alone (as
        # they passed their check in the bench that chose "fused"), not to the fast path
        self.blocks_fallback = False
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if device == "cpu":
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # a dry run never touches a GPU
        self.carried = carried
        self.log = Log(out / "job.log")
        self.info: dict[str, Any] = {"report": report(), "device": device, "minutes": minutes,
                                     "parallel": parallel, "toy": toy, "kernels": FUSED,
                                     "runs": {}}
        self.runs = [self._prepare(name) for name in runs]
        if fewest_steps_first:
            self.runs.sort(key=lambda run: run.start_step)

    # -- preparation ----------------------------------------------------------------------
    def _prepare(self, name: str) -> Run:
        """A fresh run folder, or one holding the carried checkpoint and history to resume."""
        run_dir = self.work / name
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        source = self.carried / name / CHECKPOINT if self.carried else None
        if source is None or not source.is_file():
            return Run(name, run_dir, resumed=False)
        try:
            state = load_checkpoint(source)
        except CheckpointError as exc:
            raise JobError(f"run {name}: {exc}") from None
        expected = load_profile(RUNS[name][0], run_overrides(name, self.toy)).to_dict()
        diff = config_diff(state["config"], expected, ignore=EXTENDABLE)
        if diff:
            raise JobError(f"run {name}: carried checkpoint {source} does not fit the job's "
                           f"{'toy ' if self.toy else ''}config: " + "; ".join(diff[:3]))
        shutil.copy2(source, run_dir / CHECKPOINT)
        if (source.parent / METRICS).is_file():
            shutil.copy2(source.parent / METRICS, run_dir / METRICS)
        return Run(name, run_dir, resumed=True, start_step=state["counters"]["global_step"])

    # -- the toolchain ------------------------------------------------------------------
    def use_ptxas(self, given: Path) -> None:
        """From here on Triton compiles with the ptxas `given` (or with the one its .xz holds,
        unpacked into the work folder), if that builds and runs the block kernel on this GPU
        (`bench fused`'s check at the reference tiling, batch 4: cubins the driver loads, finite
        blocks); else with its own, and the log says why. The report names the one in use."""
        from hrm_agent.bench.fused import command
        from hrm_agent.models.fused import TILING  # (triton: only a GPU window gets here)

        info = self.info["ptxas"] = {"given": str(given)}
        try:
            path = given
            if given.suffix == ".xz":
                path = self.work / "ptxas"
                with lzma.open(given) as src, path.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                path.chmod(0o755)
            info["version"] = ptxas_version(path)
        except (OSError, lzma.LZMAError, RuntimeError) as exc:
            info["error"] = f"{type(exc).__name__}: {exc}"
            self.log(f"--ptxas {given}: {info['error']}; Triton compiles with its own")
            return
        self.env[PTXAS_VAR] = str(path)
        outcome = self.subprocess(command(TILING, 4, "check"), timeout_s=PTXAS_CHECK_TIMEOUT_S)
        lines = outcome.get("stdout", "").splitlines()
        rows = [row for line in lines if line.startswith("{") for row in json.loads(line).values()]
        finite = bool(rows) and all(row.get("finite") for row in rows)
        if not (outcome["ok"] and finite):
            del self.env[PTXAS_VAR]
            info["error"] = outcome.get("reason") or f"blocks not finite: {rows}"
            self.log(f"--ptxas {given} ({info['version']}): the block kernel failed its check "
                     f"({info['error']}); Triton compiles with its own")
            self.log.tail("ptxas check", outcome.get("stderr", ""))
            return
        info["ok"] = True
        self.info["report"]["ptxas"] = info["version"]
        self.log(f"Triton compiles with ptxas {info['version']} ({given}): it built and ran the "
                 "block kernel")

    # -- smoke and benchmark ------------------------------------------------------------
    def smoke(self) -> dict[str, Any]:
        """A few eager optimizer steps of paper-fourrooms (Carry Z) through the `train` command,
        in a subprocess: steps/s of the last logged window, after the first cycle's warm-up."""
        run_dir = self.work / "smoke"
        steps = 16 if self.toy else 48
        overrides = [*run_overrides("fourrooms-carry-z", self.toy), f"train.total_steps={steps}",
                     "train.log_interval=8", "train.val_interval=100000", *PATHS["eager"]]
        cmd = train_command(run_dir, "fourrooms-carry-z", False, overrides)
        start = time.monotonic()
        outcome = self.subprocess(cmd, timeout_s=120)
        if not outcome["ok"]:
            self.log.tail("smoke test failed", outcome["stderr"])
        outcome.pop("stderr", None)
        if outcome["ok"]:
            train = [r for r in read_records(run_dir / METRICS)[0] if r["kind"] == "train"]
            outcome.update(wall_s=round(time.monotonic() - start, 1),
                           optimizer_steps_per_s=train[-1]["optimizer_steps_per_s"])
        return outcome

    def benchmark(self, profile: str, modes: list[str]) -> dict[str, Any]:
        """`bench train --quick` on `profile` in `modes`, in a subprocess (one profile at a
        time: each compiles anew, minutes that the runs need more)."""
        left = self.end - time.monotonic()
        if left < MIN_RUN_S:
            return {"ok": False, "reason": "skipped, no time left in the budget"}
        cmd = [sys.executable, "-m", "hrm_agent", "bench", "train", "--quick", "--json",
               "--profiles", profile, "--modes", ",".join(modes)]
        outcome = self.subprocess(cmd, timeout_s=min(BENCH_TIMEOUT_S, left))
        if outcome["ok"]:
            outcome["result"] = json.loads(outcome.pop("stdout").strip().splitlines()[-1])
        else:
            self.log.tail(f"bench train {profile} failed", outcome["stderr"])
            partial = last_partial(outcome.pop("stderr"))
            if partial:
                outcome["partial"] = partial
        return outcome

    def subprocess(self, cmd: list[str], timeout_s: float) -> dict[str, Any]:
        """Run `cmd`: {"ok", "stdout"} or {"ok": False, "reason", "stderr" (what it wrote)}."""
        try:
            proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as error:  # (its output is bytes, whatever `text` says)
            return {"ok": False, "reason": f"timed out after {timeout_s:.0f} s",
                    "stderr": (error.stderr or b"").decode(errors="replace")}
        if proc.returncode:
            return {"ok": False, "reason": error_line(proc.stderr or proc.stdout),
                    "stderr": proc.stderr}
        return {"ok": True, "stdout": proc.stdout}

    def measure(self, profile: str, key: str, modes: list[str]) -> dict[str, Any]:
        start = time.monotonic()
        bench = self.info[key] = self.benchmark(profile, modes)
        self.log(f"bench train {profile} ({time.monotonic() - start:.0f} s): "
                 + json.dumps(bench.get("result") or [bench["reason"], bench.get("partial")]))
        self.mirror()  # job.json: the measurement comes back even if the window ends now
        return bench

    def choose_tiling(self) -> None:
        """`bench fused`: the fused blocks (their bench, then the runs) go at the fastest tiling
        whose blocks are the reference tiling's (`fastest_tiling`), through `TILING_VAR`; at
        the reference tiling if none was timed."""
        from hrm_agent.bench.fused import fastest_tiling, tiling_name

        left = self.end - time.monotonic()
        if left < MIN_RUN_S:
            return
        start = time.monotonic()
        cmd = [sys.executable, "-m", "hrm_agent", "bench", "fused", "--json"]
        outcome = self.info["bench_tilings"] = self.subprocess(
            cmd, timeout_s=min(TILINGS_TIMEOUT_S, left))
        if outcome["ok"]:
            outcome["result"] = json.loads(outcome.pop("stdout").strip().splitlines()[-1])
        else:  # (stopped at the deadline, it keeps the tilings it timed)
            stderr = outcome.pop("stderr")
            self.log.tail("bench fused failed", stderr)
            if partial := last_partial(stderr):
                outcome["partial"] = partial
        tiling = fastest_tiling(_measured(outcome))
        self.set_tiling(tiling)
        self.log(f"bench fused ({time.monotonic() - start:.0f} s): "
                 + json.dumps(_measured(outcome) or outcome["reason"]) + "; the fused blocks go at "
                 + (tiling_name(tiling) if tiling else "the reference tiling"))
        self.mirror()
        self.sanitize(_measured(outcome))

    def sanitize(self, result: dict | None) -> None:
        """If the reference tiling's process failed in `bench fused` (`result`): that process
        once more under compute-sanitizer's memcheck (`SANITIZER_TIMEOUT_S`), its report into
        job.json ("sanitizer") and the log."""
        from hrm_agent.bench.fused import command, tiling_name
        from hrm_agent.models.fused import TILING

        entry = (result or {}).get("tilings", {}).get(tiling_name(TILING), {})
        tool = shutil.which("compute-sanitizer") or next(
            iter(sorted(glob.glob("/usr/local/cuda*/bin/compute-sanitizer"))), None)
        left = self.end - time.monotonic() - MIN_RUN_S
        if "error" not in entry or tool is None or left < MIN_RUN_S:
            return
        start, log = time.monotonic(), self.work / "sanitizer.log"
        cmd = [tool, "--tool", "memcheck", "--print-limit", "4", "--log-file", str(log),
               *command(TILING, result["batch"], "check")]
        outcome = self.subprocess(cmd, timeout_s=min(SANITIZER_TIMEOUT_S, left))
        report = log.read_text(errors="replace").splitlines() if log.is_file() else []
        report = [line for line in report if line.strip("= ")][:SANITIZER_LINES]
        self.info["sanitizer"] = {"ok": outcome["ok"], "reason": outcome.get("reason"),
                                  "report": report}
        verdict = "no fault" if outcome["ok"] else outcome["reason"]
        self.log(f"compute-sanitizer on the reference tiling ({time.monotonic() - start:.0f} s, "
                 f"{verdict}):\n  " + "\n  ".join(report))
        self.mirror()

    def set_tiling(self, tiling: list[int] | tuple[int, ...] | None) -> None:
        """The fused blocks' tiling for the benches and runs to come (None: the reference)."""
        from hrm_agent.models.fused import TILING_VAR  # (triton: only the fused path gets here)

        self.info["tiling"] = tiling
        if tiling:
            self.env[TILING_VAR] = ",".join(map(str, tiling))
        else:
            self.env.pop(TILING_VAR, None)

    def earlier_verdict(self) -> dict[str, Any] | None:
        """The last earlier window (in `--from`'s windows.jsonl) on this GPU, torch, triton, ptxas
        and training code, if it trained on the fast path by a measured verdict (its own bench's, or
        one it reused) and no run of it failed: then that verdict stands for this window too."""
        path = self.carried / "windows.jsonl" if self.carried else None
        if path is None or not path.is_file():
            return None
        try:
            windows = read_records(path)[0]
        except ValueError as exc:
            self.log(f"no earlier verdict: {exc}")
            return None
        same = lambda w: (w.get("device") == "cuda" and not w.get("toy") and all(  # noqa: E731
            w.get("report", {}).get(key) == self.info["report"].get(key)
            for key in ("gpu", "torch", "triton", "ptxas", "code")))
        last = next((w for w in reversed(windows) if same(w)), None)
        failed = last and any(run.get("error") for run in last.get("runs", {}).values())
        return last if last and _measured_fast(last) and not failed else None

    def choose_fast(self) -> bool:
        """Whether the runs train on the fast path: (auto) an earlier window's verdict on this
        machine (`earlier_verdict`), which skips the smoke test too; else, after the smoke test,
        `--fast on`/`off`, or (auto, and `--fast bench` always) the benchmark's verdict on
        paper-fourrooms (with `--bench-maze`, paper-maze is measured too, for the record)."""
        earlier = self.earlier_verdict() if self.fast == "auto" and not self.bench_maze else None
        if earlier:  # that window ran this very code here: no smoke test can tell more
            self.info["fast_verified_by"] = earlier["date"]
            self.fused = fused_mode(earlier)
            self.blocks_fallback = bool(_checked_rates(_measured(earlier.get("bench_fused")),
                                                       ["fused-blocks"]))
            if self.fused and earlier.get("tiling"):
                self.set_tiling(earlier["tiling"])
            self.log(f"training fast without a smoke test or a bench: the window of "
                     f"{earlier['date']} found the fast path equal to eager and faster, and "
                     "trained on it, on this GPU, torch, triton and code")
            return True
        eager = self.smoke()
        eager.pop("stdout", None)
        self.info["smoke"] = {"eager": eager}
        if not eager["ok"]:
            raise JobError(f"smoke test failed (eager): {eager['reason']}")
        self.log(f"smoke eager: {eager['optimizer_steps_per_s']:.1f} optimizer steps/s "
                 f"({eager['wall_s']} s)")
        if self.fast in ("on", "off", "fused"):  # trusted unmeasured: a failing run is retried
            self.fused = "fused" if self.fast == "fused" else ""
            self.blocks_fallback = bool(self.fused)
            return self.fast != "off"
        bench = self.measure("paper-fourrooms", "bench", ["eager", "fast"])
        if bench["ok"] and self.bench_maze:
            self.measure("paper-maze", "bench_maze", ["eager", "fast", "fused"])
        if not bench["ok"]:
            self.log("fast path not measured, training eager")
            return False
        result = bench["result"]
        if not result["fast_path_check"]["ok"]:
            self.log("the fast path does not train as the eager one does, training eager: "
                     + json.dumps(result["fast_path_check"]))
            return False
        row = result["paper-fourrooms"]
        eager, fast = (row[mode]["optimizer_steps_per_s"] for mode in ("eager", "fast"))
        # Our kernels in a bench of their own (new kernels that fail, even one that breaks its
        # process's CUDA context, cost the fast path nothing), without and with those that no
        # GPU has trained on, at the tiling `bench fused` chose (what a bench that died had
        # measured counts); should neither pass there, the fused blocks alone at the reference
        # tiling, as an H100 trained on them.
        self.choose_tiling()
        for modes in (list(FUSED), ["fused-blocks"]):
            ours = self.measure("paper-fourrooms", "bench_fused", modes)
            rates = _checked_rates(_measured(ours), modes)
            if rates:
                break
            self.log(f"{' and '.join(modes)}: failed their checks or did not run")
            self.set_tiling(None)
        best = max(rates, key=rates.get, default="")
        self.fused = best if rates.get(best, 0.0) > fast else ""
        self.blocks_fallback = "fused-blocks" in rates
        faster = max([fast, *rates.values()]) > eager
        self.log(f"paper-fourrooms optimizer steps/s: eager {eager:.1f}, fast {fast:.1f}, "
                 + (", ".join(f"{mode} {rate:.1f}" for mode, rate in rates.items())
                    or "ours failed their checks or did not run")
                 + "; training " + ((f"fast with {FUSED[self.fused]}" if self.fused else "fast")
                                    if faster else "eager (fast is not faster)"))
        return faster

    # -- the queue ------------------------------------------------------------------------
    def launch(self, run: Run, fast: bool, deadline: float, fused: str = "",
               checked: bool = False) -> None:
        """Start `run`'s train process: resumed when its folder holds a checkpoint (carried in,
        or written before a failed fast try), else fresh. `checked`: with `CHECK_VAR` set, so
        that a fault names which of our kernels it surfaced in (a retry after one)."""
        resume = (run.dir / CHECKPOINT).is_file()
        overrides = ([] if resume else run_overrides(run.name, self.toy))
        overrides += PATHS[(fused or "fast") if fast else "eager"]
        cmd = train_command(run.dir, run.name, resume, overrides)
        env = self.env
        if checked:
            from hrm_agent.models.fused import CHECK_VAR  # (triton: only the fused path gets here)

            env = dict(env, **{CHECK_VAR: "1"})
        log = (run.dir / "train.log").open("a")
        run.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        run.state, run.deadline, run.started = "running", deadline, time.monotonic()
        run.fast, run.fused = fast, fused if fast else ""
        path = f" (fast path{', ' + run.fused if run.fused else ''})" if fast else ""
        self.log(f"{run.name}: {'resumed' if resume else 'started'}{path} "
                 f"(pid {run.process.pid}), "
                 f"until {time.strftime('%H:%M:%S', time.localtime(time.time() + deadline - time.monotonic()))}")

    def poll(self, run: Run) -> None:
        now = time.monotonic()
        if run.state == "running" and now >= run.deadline:
            run.process.send_signal(signal.SIGTERM)
            run.state, run.deadline = "stopping", now + GRACE_S
        elif run.state == "stopping" and now >= run.deadline:
            run.process.kill()
            run.deadline = math.inf
            self.log(f"{run.name}: killed {GRACE_S} s after SIGTERM")
        code = run.process.poll()
        if code is None:
            return
        run.wall_s += now - run.started
        if code == 0 or run.state == "stopping":  # a signal we sent: what was saved stays
            run.state = "done" if code == 0 else f"stopped (exit {code})"
            return
        run.state = "failed"
        output = (run.dir / "train.log").read_text()
        run.error = error_line(output)
        self.log(f"{run.name}: failed (exit {code}): {run.error}")
        self.log.tail(f"{run.name}: train.log", output)
        if run.fast and run.deadline - now > MIN_RUN_S:  # a step down (the module's docstring)
            fused = "fused-blocks" if run.fused == "fused" and self.blocks_fallback else ""
            self.log(f"{run.name}: retrying on the " + (
                f"fast path with {FUSED[fused]}, each kernel checked" if fused else
                "fast path without our kernels" if run.fused else "eager path"))
            self.launch(run, bool(run.fused), run.deadline, fused, checked=bool(fused))

    def mirror(self) -> None:
        """Copy what changed into `out`; a failed write (full disk) is logged, the previous
        copy stays whole, and the job goes on."""
        try:
            self._mirror()
        except OSError as exc:
            self.log(f"could not write to {self.out}: {exc}")
        except ValueError as exc:  # a corrupt metrics line: the rest still comes back
            self.log(f"could not read a run's metrics: {exc}")

    def _mirror(self) -> None:
        changed_best = False
        for run in self.runs:
            for name in (CHECKPOINT, BEST, METRICS):
                path = run.dir / name
                if not path.is_file() or run.seen.get(name) == path.stat().st_mtime_ns:
                    continue
                run.seen[name] = path.stat().st_mtime_ns
                if name == CHECKPOINT:
                    atomic_write(self.out / f"{run.name}.pt", lambda tmp: shutil.copyfile(path, tmp))
                elif name == BEST:
                    changed_best = True
                else:
                    records = read_records(path)[0]  # a line in flight is skipped
                    for r in records[len(run.records):]:
                        if r.get("kind") in ("val", "resume", "stop"):
                            self.log(f"{run.name}: {json.dumps(r)}")
                        elif r.get("kind") == "train":
                            self.log(f"{run.name}: step {r['step']} loss {r['loss']:.4g} "
                                     f"{r['optimizer_steps_per_s']:.1f} steps/s eps {r['epsilon']:.3f}")
                    run.records = records
        if any(run.seen.get(METRICS) for run in self.runs):
            lines = "".join(json.dumps({"run": run.name, **r}) + "\n"
                            for run in self.runs for r in run.records)
            atomic_write(self.out / METRICS, lambda tmp: tmp.write_text(lines))
        if changed_best:
            best = {run.name: load_checkpoint(run.dir / BEST) for run in self.runs
                    if (run.dir / BEST).is_file()}
            atomic_write(self.out / BEST, lambda tmp: save_checkpoint({"agents": best}, tmp))
        self.info["runs"] = {run.name: run.summary() for run in self.runs}
        atomic_write(self.out / "job.json", lambda tmp: tmp.write_text(json.dumps(self.info, indent=1)))

    def train(self, fast: bool) -> None:
        """The queue in `parallel` places, each run until the window's deadline; a run that ends
        sooner hands its place to the next."""
        if not self.parallel:  # auto (see the module docstring)
            self.parallel = 1 if fast or self.device == "cpu" else len(self.runs)
        self.info["parallel"] = self.parallel
        self.env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.parallel))
        queue, deadline = list(self.runs), self.end - STOP_S
        while True:
            active = [run for run in self.runs if run.state in ("running", "stopping")]
            while queue and len(active) < self.parallel:
                run = queue.pop(0)
                if deadline - time.monotonic() > MIN_RUN_S:
                    self.launch(run, fast, deadline, self.fused)
                    active.append(run)
                else:
                    run.state = "skipped"
                    self.log(f"{run.name}: skipped, no time left in the budget")
            if not active:
                break
            time.sleep(POLL_S)
            for run in active:
                self.poll(run)
            self.mirror()
        self.mirror()

    def run(self) -> dict[str, Any]:
        self.log("report: " + json.dumps(self.info["report"]))
        self.mirror()
        if self.ptxas:
            self.use_ptxas(self.ptxas)
        fast = self.choose_fast()
        self.info["fast"], self.info["fused"] = fast, self.fused if fast else ""
        self.train(fast)
        self.info["wall_s"] = round(time.monotonic() - self.started, 1)
        self.mirror()
        for name, summary in self.info["runs"].items():
            self.log(f"{name}: {summary['state']}, step {summary['step']}, "
                     f"{summary['optimizer_steps_per_s']} steps/s, wall {summary['wall_s']} s")
        return self.info


def gpu_job(out: str | Path, *, minutes: float = 8.5, runs: list[str] | None = None,
            parallel: int = 0, carried: str | Path | None = None, device: str = "cuda",
            toy: bool = False, fast: str = "auto", work: str | Path | None = None,
            bench_maze: bool = False, ptxas: str | Path | None = None) -> dict[str, Any]:
    """Run the job (see the module docstring); returns what `job.json` holds."""
    if device not in ("cuda", "cpu"):
        raise JobError(f"--device must be cuda or cpu, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise JobError(f"no CUDA device visible to torch {torch.__version__} "
                       f"(CUDA build: {torch.version.cuda}); use --device cpu for a dry run")
    balance, runs = runs is None, list(RUNS) if runs is None else runs
    unknown = [name for name in runs if name not in RUNS]
    if unknown or not runs:
        raise JobError(f"unknown run(s) {unknown}; choose from {', '.join(RUNS)}")
    if minutes <= 0:
        raise JobError(f"--minutes must be > 0, got {minutes}")
    if parallel < 0:
        raise JobError(f"--parallel must be >= 0 (0: one run at a time on the fast path or a CPU, "
                       f"all at once on the eager path), got {parallel}")
    if carried is not None and not Path(carried).is_dir():
        raise JobError(f"--from {carried} is not a folder")
    if ptxas is not None and not Path(ptxas).is_file():
        raise JobError(f"--ptxas {ptxas} is not a file (`make ptxas` writes .ptxas/ptxas.xz)")
    if ptxas is not None and device != "cuda":
        raise JobError("--ptxas is for a GPU window (--device cuda): a dry run compiles nothing")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise JobError(f"--out {out} is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="hrm-gpu-job-"))
    if fast not in ("auto", "bench", "on", "off", "fused"):
        raise JobError(f"--fast must be auto, bench, on, off or fused, got {fast!r}")
    if bench_maze and fast in ("on", "off", "fused"):
        raise JobError(f"--bench-maze measures the fast path; it cannot go with --fast {fast}")
    if fast == "auto" and device == "cpu":
        fast = "off"  # inductor's C++ compile costs more than a dry run's minutes
    job = Job(out, work, runs, minutes=minutes, parallel=parallel, toy=toy, device=device,
              carried=Path(carried) if carried else None, fast=fast, bench_maze=bench_maze,
              fewest_steps_first=balance, ptxas=Path(ptxas) if ptxas else None)
    return job.run()


def import_window(src: str | Path, into: str | Path = "pretrained/gpu-runs",
                  agents: str | Path | None = "pretrained") -> list[str]:
    """File one window's output (`src`, the job's `--out`) into the repo: each run's checkpoint
    and full metrics history under `into/<run>/`, the window's `job.json` appended to
    `into/windows.jsonl`, and each improved best agent as `agents/<run>/agent.pt` (with the
    run's config.json and metrics.jsonl beside it). An agent trained on CUDA is exported with
    the dtype it computed in, `model.dtype = "bfloat16"` ("auto" means that on CUDA and fp32 on
    a CPU), so a CPU runs it as it was trained, and 1.4x faster than in fp32 on the 2-core
    development CPU. Returns the paths written."""
    src, into = Path(src), Path(into)
    if not (src / "job.json").is_file():
        raise FileNotFoundError(f"{src} holds no job.json: is it a gpu-job output folder?")
    info = json.loads((src / "job.json").read_text())
    written = []
    by_run: dict[str, list[dict]] = {}
    for record in read_records(src / METRICS)[0]:
        by_run.setdefault(record.pop("run"), []).append(record)
    for name in info["runs"]:
        run_dir = into / name
        run_dir.mkdir(parents=True, exist_ok=True)
        if (src / f"{name}.pt").is_file():  # and its config, as a run folder has (the plots read it)
            shutil.copyfile(src / f"{name}.pt", run_dir / CHECKPOINT)
            write_config(run_dir, load_checkpoint(run_dir / CHECKPOINT)["config"])
            written += [str(run_dir / CHECKPOINT), str(run_dir / CONFIG)]
        if name in by_run:  # the full history: a resumed run's file started from the carried one
            (run_dir / METRICS).write_text("".join(json.dumps(r) + "\n" for r in by_run[name]))
            written.append(str(run_dir / METRICS))
    with (into / "windows.jsonl").open("a") as f:
        f.write(json.dumps({"date": time.strftime("%Y-%m-%d"), **info}) + "\n")
    (into / "README.md").write_text(history_markdown(into))
    written += [str(into / "windows.jsonl"), str(into / "README.md")]
    if agents is not None and (src / BEST).is_file():
        for name, agent in torch.load(src / BEST, weights_only=True)["agents"].items():
            target = Path(agents) / name
            current = target / "agent.pt"
            if current.is_file() and not _better(agent["last_val"], _rank(current, agent)):
                continue
            if info.get("device") == "cuda" and agent["config"]["model"]["dtype"] == "auto":
                agent["config"]["model"]["dtype"] = "bfloat16"
            save_checkpoint(agent_state(agent), current)
            write_config(target, agent["config"])
            shutil.copyfile(into / name / METRICS, target / METRICS)
            written.append(str(current))
    return written


def _rank(agent_path: Path, new: dict[str, Any]) -> dict[str, float]:
    """The validation the agent at `agent_path` holds its place with: none (so it is replaced)
    when it comes from another profile, whose validation used other episodes."""
    state = load_checkpoint(agent_path)
    same = state["config"].get("description") == new["config"].get("description")
    return state["last_val"] if same else {}


def history_markdown(into: str | Path) -> str:
    """`pretrained/gpu-runs/README.md`: every run's progress over the GPU windows so far."""
    into = Path(into)
    windows = [json.loads(line) for line in (into / "windows.jsonl").read_text().splitlines()]
    lines = ["# GPU runs", "",
             "Written by `python -m hrm_agent gpu-import` from `windows.jsonl` (one line per GPU",
             "window) and each run's `metrics.jsonl` (its whole history). Each folder's",
             "`checkpoint.pt` resumes the run in the next window (`gpu-job --from pretrained/gpu-runs`);",
             "it holds no replay buffer, so every window starts by refilling it (the run's",
             "`resume` records say so). The Carry Z runs explore with an ε coin per env, the Reset Z",
             "runs with one coin for the whole batch, as the authors' runs of each condition did.", "",
             "| run | windows | optimizer steps | GPU minutes | steps/s (last window) | best validation success (step) |",
             "|---|---|---|---|---|---|"]
    for name in RUNS:
        # the windows it trained in (one that skipped it lists it too, at its carried step)
        own = [w for w in windows if name in w["runs"] and w["runs"][name]["step"] > 0
               and w["runs"][name].get("wall_s", 0) > 0]
        if not own:
            continue
        vals = [r for r in read_records(into / name / METRICS)[0] if r["kind"] == "val"]
        best = max(vals, key=lambda r: (r["success_rate"], -r["mean_episode_length"]), default=None)
        last = own[-1]["runs"][name]
        minutes = sum(w["runs"][name]["wall_s"] for w in own) / 60
        rate = f"{last['optimizer_steps_per_s']:.1f}" if last["optimizer_steps_per_s"] else "-"
        top = f"{best['success_rate']:.3f} ({best['step']:,})" if best else "-"
        lines.append(f"| `{name}` | {len(own)} | {last['step']:,} | {minutes:.1f} | {rate} | {top} |")
    gpus = sorted({w["report"].get("gpu", "CPU (dry run)") for w in windows})
    lines += ["", f"Devices: {', '.join(gpus)}. Windows: "
              + ", ".join(f"{w['date']} ({w.get('wall_s', 0) / 60:.1f} min, {_trained_on(w)}"
                          f"{_training_share(w)})" for w in windows) + ".",
              "", "(The share of a window spent training: each run's steps at its last steady",
              "rate, over the window's wall time and places; the rest went to the smoke test,",
              "benches, start-up, compiling, validations and checkpoints.)"]
    return "\n".join(lines + bench_markdown(windows) + tilings_markdown(windows)) + "\n"


def _measured_fast(window: dict[str, Any]) -> bool:
    """Whether a window trained on the fast path by a bench's verdict: its own, or one it reused."""
    return bool(window.get("fast") and (window.get("bench") or window.get("fast_verified_by")))


def fused_mode(window: dict[str, Any]) -> str:
    """The mode of `FUSED` a window trained on, or "" (windows before "fused-blocks" recorded
    True: the fused blocks were all the "fused" mode had then)."""
    fused = window.get("fused")
    return fused if isinstance(fused, str) else "fused-blocks" if fused else ""


def _kernels_of(window: dict[str, Any], mode: str) -> str:
    """What `mode` of `FUSED` ran in `window`, as it recorded (a mode's kernels change with the
    code); in the windows before that, as `FUSED` says, and in those that recorded no mode's
    name, "fused" was the fused blocks alone."""
    if "kernels" in window:
        return window["kernels"][mode]
    return FUSED["fused-blocks" if not isinstance(window.get("fused"), str) else mode]


def _trained_on(window: dict[str, Any]) -> str:
    """How a window's runs trained: eager, or fast (with the fused blocks?) and by whose
    verdict, and which runs failed on that path (and were retried a step down)."""
    if not window.get("fast"):
        return "eager"
    path = f"fast with {_kernels_of(window, fused_mode(window))}" if window.get("fused") else "fast"
    by = window.get("fast_verified_by")
    how = (f"{path}, unmeasured" if not _measured_fast(window)
           else f"{path}, as measured on {by}" if by else path)
    failed = [name for name, run in window["runs"].items() if run.get("error")]
    return how + "".join(f"; {name} failed on it and was retried on a slower path" for name in failed)


def _training_share(window: dict[str, Any]) -> str:
    """The share of a window its runs spent training, as ", N% training": their steps at their
    last steady rates, over the window's wall time times its places."""
    wall = window.get("wall_s", 0) * window.get("parallel", 1)
    seconds = sum((run["step"] - run["start_step"]) / run["optimizer_steps_per_s"]
                  for run in window["runs"].values() if run.get("optimizer_steps_per_s"))
    return f", {100 * seconds / wall:.0f}% training" if wall > 0 and seconds else ""


def bench_markdown(windows: list[dict[str, Any]]) -> list[str]:
    """The windows' `bench train --quick` results (for a bench stopped by its timeout, what it
    had measured; the fused mode measured in a bench of its own, `bench_fused`), and the
    busiest kernels of the last path profiled (fused, where a window measured it, else fast)."""
    rows, busiest = [], None
    for w in windows:
        fused_bench = _measured(w.get("bench_fused")) or {}
        for bench in (w.get(key) for key in ("bench", "bench_maze")):
            result = _measured(bench)
            if not result:
                continue
            stopped = "" if bench["ok"] else f" (stopped: {bench['reason']})"
            checks = [_check(result.get("fast_path_check")), "; ".join(
                f"{_check(check)}{_but(mode)}"
                for mode, check in _fused_entries(result, fused_bench, suffix="_check").items()) or "-"]
            for profile in (key for key in result if key.startswith("paper-")):
                eager, fast = (result[profile].get(mode, {}) for mode in ("eager", "fast"))
                fused = _fused_entries(result[profile], fused_bench.get(profile, {}))
                cells = [w["date"], result["device"], profile + stopped]
                rows.append(_bench_row(cells, eager, fast, fused, checks))
                for mode, timing in (("fast", fast), *reversed(fused.items())):  # "fused" last
                    if timing.get("kernels", {}).get("top"):
                        busiest = (w, profile, mode, timing["kernels"])
    if not rows:
        return []
    lines = ["", "## Training speed (`bench train --quick`, run by each window's job)", "",
             "| window | device | profile | eager optimizer steps/s | fast | fused | fast / eager "
             "| fast GB/s (of the copy roofline) | fast: device busy | checks: fast, fused |",
             "|---|---|---|---|---|---|---|---|---|---|", *rows]
    if busiest:
        w, profile, mode, kernels = busiest
        date = w["date"]
        path = f"fast path with {_kernels_of(w, mode)}" if mode in FUSED else "fast path"
        count = (f", {kernels['kernels_per_step']:,} kernels"
                 if "kernels_per_step" in kernels else "")
        lines += ["", f"Busiest kernels of the {path}, {profile}, {date} "
                  f"({kernels['ms_per_step']} ms of kernel time{count} per optimizer step):", "",
                  "| kernel | calls per step | ms per step | share |", "|---|---|---|---|"]
        lines += [f"| `{k['name']}` | {k['calls_per_step']} | {k['ms_per_step']} | {k['share']:.1%} |"
                  for k in kernels["top"][:10]]
    return lines


def tilings_markdown(windows: list[dict[str, Any]]) -> list[str]:
    """The last window's `bench fused`: µs per block pass of each tiling at each shape (what a
    tiling measured before it failed, and where it failed), and the tiling the fused path
    trained at."""
    from hrm_agent.bench.fused import tiling_name

    window = next((w for w in reversed(windows) if _measured(w.get("bench_tilings"))), None)
    if window is None:
        return []
    trained = tiling_name(window["tiling"]) if window.get("tiling") else "the reference"
    result = _measured(window["bench_tilings"])
    shapes = list(dict.fromkeys(s for e in result["tilings"].values() for s in e.get("shapes", {})))
    lines = ["", f"## The fused block kernel's tilings (`bench fused`, {window['date']}, "
             f"{result['device']}, batch {result['batch']})", "",
             "µs per block pass (bf16 weights, as training passes them), and the largest "
             f"difference from the reference tiling's blocks ({result['reference']}), or the "
             f"error that stopped the tiling's process. Trained at: {trained}.", "",
             _row(["tiling", *shapes, "max difference (or error, and at which launch)"]),
             "|---|" + "---|" * (len(shapes) + 1)]
    for name, entry in result["tilings"].items():
        rows = entry.get("shapes", {})
        cells = [str(rows[s]["us_per_pass"]) if "us_per_pass" in rows.get(s, {}) else "-"
                 for s in shapes]
        if "error" in entry:
            last = entry["error"][:80] + (f" (at: {entry['at']})" if entry.get("at") else "")
        else:
            last = f"{max(r['max_diff'] if r['finite'] else math.inf for r in rows.values()):.3g}"
        lines.append(_row([name, *cells, last]))
    return lines


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _checked_rates(result: dict[str, Any] | None, modes: list[str],
                   profile: str = "paper-fourrooms") -> dict[str, float]:
    """Per mode of `modes` that passed its check in a `bench train` result and was timed on
    `profile`, its optimizer steps/s."""
    result = result or {}
    timed = {mode: result.get(profile, {}).get(mode, {}).get("optimizer_steps_per_s")
             for mode in modes if result.get(f"{mode}_check", {}).get("ok")}
    return {mode: rate for mode, rate in timed.items() if rate}


def _measured(bench: dict[str, Any] | None) -> dict[str, Any] | None:
    """A bench's result, or what a stopped one had measured."""
    return bench and (bench.get("result") or bench.get("partial"))


def _fused_entries(*entries: dict[str, Any], suffix: str = "") -> dict[str, dict[str, Any]]:
    """Per mode of `FUSED` that one of `entries` holds (as `mode + suffix`), what it holds."""
    return {mode: found for mode in FUSED
            if (found := next((e[mode + suffix] for e in entries if e.get(mode + suffix)), None))}


def _check(check: dict[str, Any] | None) -> str:
    return {True: "ok", False: "FAILED"}.get((check or {}).get("ok"), "-")


def _but(mode: str) -> str:
    """How a table marks a measurement of a fused mode other than "fused"."""
    return "" if mode == "fused" else f" ({mode})"


def _bench_row(cells: list[str], eager: dict, fast: dict, fused: dict[str, dict],
               checks: list[str]) -> str:
    """`fused`: per mode of `FUSED` measured, its timing."""
    e, f = (mode.get("optimizer_steps_per_s") for mode in (eager, fast))
    ours = "; ".join(f"{timing['optimizer_steps_per_s']:.1f}{_but(mode)}"
                     for mode, timing in fused.items() if timing.get("optimizer_steps_per_s"))
    cells += [f"{e:.1f}" if e else "-", f"{f:.1f}" if f else "-", ours or "-",
              f"{f / e:.1f}x" if e and f else "-",
              f"{fast['effective_GBps']} ({fast['fraction_of_copy_roofline']:.2f})" if f else "-",
              str(fast.get("kernels", {}).get("busy", "-")), ", ".join(checks)]
    return _row(cells)
