"""The DQN training loop of HRM-Agent, in the order the authors' code runs it (paper-notes §3.4).

One *cycle*:
1. collect: every one of the B training envs takes one step (`env_steps_per_batch` times). The
   model runs for every env every step, so under Carry Z the chain of z through env time never
   breaks; each transition stores the seed s_t was processed from and the seed for s_{t+1}.
2. learn (deep supervision): sample one minibatch, compute its targets once with the target net
   (all segments, no grad), then train it for `segments` consecutive optimizer steps, one
   segment each, z detached between them. Every optimizer step: lr schedule, AdamATan2 +
   SignSGD step, Polyak target update, ε schedule.
Validation, logging and checkpoints happen between cycles, so a checkpoint never holds a
half-trained minibatch.

The hot loop reads nothing back to the host but the env's one read per `WINDOW` (32) steps:
lr and ε are computed on the device from `step_t`, the optimizers keep their step counts there,
the env resets without data-dependent shapes, and the logged sums stay on the device until a
log line. So on CUDA the acting forward and the whole learn step (target, 8 forward +
backward + optimizer + Polyak steps) can each be replayed as one CUDA graph (`graphs.py`), over
a torch.compiled segment: `train.compile` and `train.cuda_graphs`, on by default on CUDA. Both
paths run the same code and compute the same tensors.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrm_agent.agent import Agent, q_and_seed
from hrm_agent.checkpoint import (CHECKPOINT, CheckpointError, config_diff, load_checkpoint,
                                  load_module_state, save_checkpoint)
from hrm_agent.config import ConfigError, apply_overrides, parse_override, strict_json
from hrm_agent.dqn import polyak_update, q_loss, td_target
from hrm_agent.evaluate import evaluate
from hrm_agent.experiment import ExperimentConfig, TrainConfig, experiment_from_dict, load_profile
from hrm_agent.graphs import CUDAGraphed
from hrm_agent.models import QNetwork, Seed, build_model
from hrm_agent.models.layers import SwiGLU
from hrm_agent.optim import make_optimizers, set_lr
from hrm_agent.replay import ReplayBuffer
from hrm_agent.schedules import linear_schedule, warmup_constant

METRICS = "metrics.jsonl"
CONFIG = "config.json"  # the run's config, readable without torch (plots, people)
BEST = "best.pt"  # the exported agent of the best validation so far
DEFAULT_PROFILE = "cpu-fourrooms"
# What a resumed run may change: how long it goes on, and how it executes (CPU threads,
# torch.compile, CUDA graphs, fused kernels, attention kernel), none of which is in the
# checkpoint's tensors.
EXTENDABLE = ("train.total_steps", "train.max_minutes", "train.num_threads", "train.compile",
              "train.cuda_graphs", "train.fused_blocks", "train.fused_optimizer",
              "train.fused_swiglu", "model.attn_backend")


# Our kernels for layers of the blocks that carry gradient, by train setting: the layer they
# run, their name, and the function that puts them in a model (its module imports triton).
LAYER_KERNELS = {
    "fused_swiglu": (SwiGLU, "fused SwiGLU", "hrm_agent.models.fused_swiglu.use_fused_swiglu")}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


# The training paths as --set overrides (`bench train`'s modes, `gpu-job --fast`): "fast" is
# torch.compile plus, on CUDA, CUDA graphs; "fused" is "fast" with every Triton kernel of our own:
# the HRM's gradient-free updates as one kernel per block (`models/fused.py`), AdamATan2's update
# as one for all parameters (`fused_optim.py`), and in the blocks that carry gradient the SwiGLUs'
# hidden layer (`fused_swiglu.py`); their attention stays SDPA's (cuDNN's flash attention on an
# H100, whose backward took a fifth of the time of a Triton one of ours, since removed);
# "fused-blocks" with the block kernels only, as an H100 trained on them (the GPU job's
# fallback, should "fused" fail its check). CUDA only.
PATHS = {mode: [f"train.compile='{compiled}'", f"train.cuda_graphs='{graphs}'",
                f"train.fused_blocks='{blocks}'", f"train.fused_optimizer='{others}'",
                f"train.fused_swiglu='{others}'"]
         for mode, compiled, graphs, blocks, others in (
             ("eager", "off", "off", "off", "off"), ("fast", "on", "auto", "off", "off"),
             ("fused-blocks", "on", "auto", "on", "off"), ("fused", "on", "auto", "on", "on"))}


def triton_c_compiler() -> str | None:
    """The C compiler triton builds its CUDA launchers with ($CC, else gcc, else clang)."""
    found = (shutil.which(cc) for cc in (os.environ.get("CC"), "gcc", "clang") if cc)
    return next((path for path in found if path), None)


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot build kernels for `device` on this machine, or None: dynamo
    supports only some Pythons, inductor compiles C++ for a CPU (its own compiler search,
    `torch._inductor.config.cpp.cxx`), and triton needs a C compiler on CUDA."""
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support Python {sys.version.split()[0]}"
    if device.type == "cuda":
        return None if triton_c_compiler() else "triton finds no C compiler ($CC, gcc or clang)"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another torch's layout: torch.compile will tell for itself
        return None
    try:
        get_cpp_compiler()
    except (RuntimeError, OSError):  # InvalidCxxCompiler; on Windows, no cl
        return "inductor finds no C++ compiler (g++, or cl on Windows)"
    return None


def can_compile(device: torch.device, asked: str) -> bool:
    """Whether torch.compile can run for `device` here; if not, a warning that says what was
    `asked` and why the run goes on without it (the CPU profiles ask for it, and a fresh
    machine may have no compiler: better slower than failing at the first step)."""
    reason = compile_unavailable(device)
    if reason:
        warnings.warn(f"{asked}, but {reason}: it is off (the same computation, slower)",
                      RuntimeWarning, stacklevel=3)
    return reason is None


def wanted(setting: str, device: torch.device) -> bool:
    """Whether an execution setting ("on", "off" or "auto") is on for `device`: "auto" means on
    on CUDA, off on a CPU."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def fast_path(tc: TrainConfig, device: torch.device) -> tuple[bool, bool]:
    """(torch.compile, CUDA graphs) for this run (`wanted`), torch.compile off where it cannot
    run (`can_compile`)."""
    if tc.cuda_graphs == "on" and device.type != "cuda":
        raise ValueError(f"train.cuda_graphs='on' needs a CUDA device, the run is on {device.type}")
    compiled = wanted(tc.compile, device) and can_compile(device, f"train.compile is {tc.compile!r}")
    return compiled, wanted(tc.cuda_graphs, device)


class Stopwatch:
    """Wall time per section, to report the share spent outside the model (bench train).

    Off by default: timing a CUDA section needs a synchronize, which would slow training."""

    def __init__(self, device: torch.device, enabled: bool = False):
        self.device, self.enabled = device, enabled
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        if not self.enabled:
            yield
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class Trainer:
    """Owns everything a run needs; `state_dict()` is exactly what a checkpoint holds."""

    def __init__(self, config: ExperimentConfig, out_dir: str | Path | None = None, *,
                 resume: bool = False, overwrite: bool = False, timed: bool = False):
        tc = config.train
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.device = resolve_device(tc.device)
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        torch.manual_seed(tc.seed)
        self.model = build_model(config.model).to(self.device)
        self.target = build_model(config.model).to(self.device)  # independently initialised, as the authors
        if tc.target_init == "copy":
            self.target.load_state_dict(self.model.state_dict())
        # The target only runs under no_grad; its parameters keep requires_grad as the online
        # net's, so that a compiled no-grad segment is one variant for both (dynamo guards on it).
        self.optimizer, self.task_optimizer = self._make_optimizers()
        self.env = config.env.make(device=self.device, seed=tc.seed)
        self.replay = ReplayBuffer(tc.buffer_capacity, self.device, seed=tc.seed + 1,
                                   stride=self.env.num_envs)
        self.generator = torch.Generator(self.device).manual_seed(tc.seed + 2)  # exploration
        if wanted(tc.fused_blocks, self.device):
            self._use_fused_blocks(tc.fused_blocks == "on")
        for setting in LAYER_KERNELS:
            if wanted(getattr(tc, setting), self.device):
                self._use_layer_kernels(setting, getattr(tc, setting) == "on")
        self.compiled, self.graphed = fast_path(tc, self.device)
        if self.compiled:
            # A fresh start for dynamo: the compiled variants of earlier runs in this process
            # (a notebook trains several) would add up to its recompile limit (8), past which it
            # silently runs the segment eagerly.
            torch._dynamo.reset()
            self.model.compile()
            self.target.compile()
        self.learn_minibatch = self._learn_minibatch
        acting = None
        if self.graphed:
            self.learn_minibatch = CUDAGraphed(self._learn_minibatch)
            acting = CUDAGraphed(functools.partial(q_and_seed, self.model))
        self.agent = Agent(self.model, self.env.num_envs, tc.carry_z, forward=acting)
        self.obs = self.env.reset(seed=tc.seed)
        self.episode_start = torch.ones(self.env.num_envs, dtype=torch.bool, device=self.device)
        self.global_step = 0  # optimizer steps
        self.step_t = torch.zeros((), dtype=torch.float64, device=self.device)  # the same, on the device
        self.env_steps = 0  # transitions collected
        self.train_seconds = 0.0
        self.last_val: dict[str, float] = {}
        self.best_val: dict[str, float] = {}  # the validation of the agent in BEST
        self.stop_requested = False
        self._window = self._new_window()
        self.stopwatch = Stopwatch(self.device, enabled=timed)
        if resume:
            self._resume()
        elif self.out_dir is not None:
            self._claim_out_dir(overwrite)

    # -- schedules: of `global_step` for the logs, of `step_t` (the same) in the hot loop ----
    def epsilon(self, step: int | torch.Tensor | None = None) -> float | torch.Tensor:
        tc = self.config.train
        step = self.global_step if step is None else step
        return linear_schedule(tc.eps_start, tc.eps_end, tc.eps_decay_steps, step)

    def lr(self, step: int | torch.Tensor | None = None) -> float | torch.Tensor:
        tc = self.config.train
        return warmup_constant(tc.lr, tc.lr_warmup_steps, self.global_step if step is None else step)

    # -- the two halves of a cycle ----------------------------------------------------------
    @torch.no_grad()
    def collect(self) -> None:
        """One step of every training env; the transitions go to the replay buffer."""
        tc = self.config.train
        n = self.env.num_envs
        fields: dict[str, torch.Tensor] = {"obs": self.obs}
        with self.stopwatch("act"):
            if tc.eps_mode == "batch":
                # the authors' Reset Z exploration: with probability ε the whole batch acts at
                # random and the model does not run. The coin is the host's, drawn from (seed,
                # env steps): no read from the device, and a resumed run draws the same coins.
                coin = np.random.default_rng([tc.seed, self.env_steps]).random()
                if coin < self.epsilon():
                    actions = torch.randint(self.config.model.num_actions, (n,),
                                            device=self.device, generator=self.generator)
                else:
                    actions = self.agent.act(self.obs, self.episode_start).actions
            else:
                step = self.agent.act(self.obs, self.episode_start, self.epsilon(self.step_t),
                                      self.generator)
                actions = step.actions
            if tc.carry_z:
                fields.update(prev_z_H=step.prev_seed.z_H, prev_z_L=step.prev_seed.z_L,
                              next_z_H=step.seed.z_H, next_z_L=step.seed.z_L)
        with self.stopwatch("env"):
            # actions come from argmax / randint: valid by construction, no range check (a sync)
            obs, reward, terminated, truncated, info = self.env.step(actions, check=False)
        with self.stopwatch("replay"):
            self.replay.add(action=actions.to(torch.uint8), reward=reward, terminated=terminated,
                            truncated=truncated, next_obs=info["final_obs"], **fields)
        done = terminated | truncated
        self.obs, self.episode_start = obs, done
        self.env_steps += n
        w = self._window
        w["episodes"] += done.sum()
        w["successes"] += (done & info["success"]).sum()
        w["return"] += torch.where(done, info["episode_return"], 0.0).sum()

    def learn(self) -> None:
        """Deep supervision on one minibatch: `segments` optimizer steps, one segment each."""
        tc = self.config.train
        with self.stopwatch("replay"):
            if tc.n_step == 1:  # the paper: TD(0), discount gamma
                batch = self.replay.sample(tc.batch_size)
            else:
                batch = self.replay.sample_n_step(tc.batch_size, tc.n_step, tc.gamma)
        with self.stopwatch("learn"):
            loss_sum = self.learn_minibatch(batch)
        self.global_step += self.config.model.segments
        self._window["loss"] += loss_sum
        self._window["updates"] += self.config.model.segments

    def _learn_minibatch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Targets, then `segments` optimizer steps on `batch`; returns the summed loss. Fixed
        shapes, no host reads: `learn_minibatch` may replay it as one CUDA graph."""
        tc = self.config.train
        b = tc.batch_size
        with torch.no_grad():
            if tc.carry_z:  # the stored, stale seed of s' (never recomputed), as the authors
                next_seed = Seed(batch["next_z_H"], batch["next_z_L"])
            else:
                next_seed = self.target.init_seed(b)
            q_next = self.target(batch["next_obs"], next_seed).q
            y = td_target(batch["reward"], batch["terminated"], q_next,
                          batch.get("discount", tc.gamma))
        seed = (Seed(batch["prev_z_H"], batch["prev_z_L"]) if tc.carry_z
                else self.model.init_seed(b))
        carry = self.model.carry_from_seed(seed)
        loss_sum = torch.zeros((), device=self.device)
        for _ in range(self.config.model.segments):
            carry, q = self.model.segment(carry, batch["obs"])
            loss = q_loss(q, batch["action"], y)
            self.optimizer.zero_grad(set_to_none=True)
            self.task_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            set_lr(self.optimizer, self.task_optimizer, self.lr(self.step_t), base_lr=tc.lr,
                   task_lr=tc.task_lr)
            self.optimizer.step()
            self.task_optimizer.step()
            polyak_update(self.target, self.model, tc.target_decay)
            self.step_t += 1
            loss_sum += loss.detach()
        return loss_sum

    # -- the loop ---------------------------------------------------------------------------
    def train(self, progress: bool = True) -> dict[str, float]:
        """Run until `total_steps` optimizer steps (or `max_minutes`); return the last validation."""
        tc = self.config.train
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=tc.total_steps, initial=self.global_step, unit="step",
                       dynamic_ncols=True, desc="train")
        self._write_config()
        last_log = (self.train_seconds, self.global_step, self.env_steps)
        while self.global_step < tc.total_steps and not self.stop_requested:
            before = self.global_step
            # Only collecting and learning count as training time (the paper's "training-step
            # time"): validation of an untrained agent can cost as much as hundreds of steps.
            cycle_start = time.perf_counter()
            with self.stopwatch("total"):
                for _ in range(tc.env_steps_per_batch):
                    self.collect()
                if len(self.replay) >= max(tc.learning_starts, tc.n_step * self.env.num_envs):
                    self.learn()
            self.train_seconds += time.perf_counter() - cycle_start
            if bar is not None:
                bar.update(self.global_step - before)
            if self._crossed(before, tc.log_interval):
                last_log = self._log_train(last_log, bar)
            if self._crossed(before, tc.val_interval):
                self.validate()
                if bar is not None:
                    bar.set_postfix(success=f"{self.last_val['success_rate']:.2f}", refresh=False)
            out_of_time = tc.max_minutes > 0 and self.train_seconds >= 60 * tc.max_minutes
            if self._crossed(before, tc.checkpoint_interval) or out_of_time:
                self.save()
            if out_of_time:
                break
        if bar is not None:
            bar.close()
        # A stop request (SIGTERM from a job's deadline) saves at once: no final validation.
        if self.stop_requested:
            self._append_metrics({"kind": "stop", "step": self.global_step,
                                  "env_steps": self.env_steps, "minutes": self.train_seconds / 60})
        elif self.last_val.get("step") != self.global_step:
            self.validate()
        self.save()
        return self.last_val

    @contextmanager
    def stop_on_signals(self, signals=(signal.SIGTERM, signal.SIGINT)):
        """While inside, SIGTERM / Ctrl-C finish the current cycle, checkpoint and return
        instead of killing the run mid-cycle (a job's wall-clock deadline, a notebook's
        interrupt). Outside the main thread signals cannot be caught: a no-op there."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        def request_stop(signum, frame):
            self.stop_requested = True
        previous = {sig: signal.signal(sig, request_stop) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _crossed(self, before: int, interval: int) -> bool:
        return self.global_step // interval > before // interval

    def validate(self) -> dict[str, float]:
        tc = self.config.train
        # One episode per training env fits the acting forward's CUDA graph. Replayed, it spares
        # the launches of the compiled segments' kernels one by one, which made a paper-profile
        # validation take ~10 s on an H100 (a fifth of the 5,000 steps between two). Only once
        # captured: a capture cannot compile, and validation runs the model in eval mode.
        acting = self.agent.forward
        graphed = (getattr(acting, "graph", None) is not None
                   and tc.val_episodes == self.env.num_envs)
        metrics = evaluate(self.model, self.config.env, carry_z=tc.carry_z,
                           episodes=tc.val_episodes, seed=tc.val_seed, device=self.device,
                           forward=acting if graphed else None)
        self.last_val = {"step": self.global_step, **metrics}
        self._append_metrics({"kind": "val", "env_steps": self.env_steps,
                              "minutes": self.train_seconds / 60, **self.last_val})
        if self.out_dir is not None and _better(self.last_val, self.best_val):
            self.best_val = self.last_val
            save_checkpoint(self.agent_state(), self.out_dir / BEST)
        return self.last_val

    # -- logging ----------------------------------------------------------------------------
    def _new_window(self) -> dict[str, Any]:
        zero = lambda dtype: torch.zeros((), dtype=dtype, device=self.device)  # noqa: E731
        return {"loss": zero(torch.float32), "updates": 0, "episodes": zero(torch.long),
                "successes": zero(torch.long), "return": zero(torch.float32)}

    def _log_train(self, last_log, bar) -> tuple[float, int, int]:
        now = self.train_seconds
        t0, step0, env0 = last_log
        w = self._window
        episodes = int(w["episodes"])
        record = {
            "kind": "train", "step": self.global_step, "env_steps": self.env_steps,
            "minutes": self.train_seconds / 60,
            "loss": float(w["loss"]) / max(w["updates"], 1),
            "epsilon": self.epsilon(), "lr": self.lr(),
            "train_success_rate": int(w["successes"]) / episodes if episodes else None,
            "train_mean_return": float(w["return"]) / episodes if episodes else None,
            "optimizer_steps_per_s": (self.global_step - step0) / max(now - t0, 1e-9),
            "env_steps_per_s": (self.env_steps - env0) / max(now - t0, 1e-9),
        }
        self._append_metrics(record)
        self._window = self._new_window()
        if bar is not None:
            bar.set_postfix(loss=f"{record['loss']:.4f}", sps=f"{record['optimizer_steps_per_s']:.1f}",
                            success=f"{self.last_val.get('success_rate', math.nan):.2f}",
                            refresh=False)
        return now, self.global_step, self.env_steps

    def _append_metrics(self, record: dict[str, Any]) -> None:
        """One unbuffered write per record, so a kill leaves at most a torn last line."""
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / METRICS).open("ab", buffering=0) as f:
            f.write((strict_json(record) + "\n").encode())

    def _write_config(self) -> None:
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_config(self.out_dir, self.config.to_dict())

    # -- checkpoints ------------------------------------------------------------------------
    def agent_state(self) -> dict[str, Any]:
        """What acting needs (see `agent_state`), without building the whole checkpoint."""
        return {"config": self.config.to_dict(), "model": self.model.state_dict(),
                "counters": {"global_step": self.global_step, "env_steps": self.env_steps,
                             "train_seconds": self.train_seconds},
                "last_val": self.last_val}

    def state_dict(self) -> dict[str, Any]:
        tc = self.config.train
        return {
            **self.agent_state(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "task_optimizer": self.task_optimizer.state_dict(),
            "replay": self.replay.state_dict(include_data=tc.save_replay),
            "env": self.env.state_dict(),
            "obs": self.obs, "episode_start": self.episode_start,
            "agent_seed": tuple(self.agent.seed),
            "generator": self.generator.get_state(),
            "best_val": self.best_val,
            "window": self._window,  # the metrics since the last train log
        }

    def _make_optimizers(self) -> tuple:
        """AdamATan2 and SignSGD; AdamATan2 fused as `train.fused_optimizer` says ("auto": on
        CUDA, and where the kernel cannot run there, a warning and the foreach update)."""
        tc = self.config.train
        make = functools.partial(
            make_optimizers, self.model, lr=tc.lr, weight_decay=tc.weight_decay,
            betas=(tc.beta1, tc.beta2), task_lr=tc.task_lr, task_weight_decay=tc.task_weight_decay)
        if wanted(tc.fused_optimizer, self.device):
            optimizers = self._try_kernels("fused_optimizer", tc.fused_optimizer == "on",
                                           lambda: make(fused=True))
            if optimizers:
                return optimizers
        return make(fused=False)

    def _use_fused_blocks(self, asked: bool) -> None:
        """The fused blocks in both nets; where they cannot run, an error if `asked`, else a
        warning and the compiled blocks ("auto"; a model other than the HRM has none to fuse)."""
        if not hasattr(self.model, "use_fused_blocks"):
            if asked:
                raise ValueError("train.fused_blocks needs the HRM, the model is "
                                 f"{self.config.model.kind!r}")
            return
        self._try_kernels("fused_blocks", asked, lambda: [
            net.use_fused_blocks() for net in (self.model, self.target)])  # both can, or neither

    def _use_layer_kernels(self, setting: str, asked: bool) -> None:
        """One of `LAYER_KERNELS` in both nets, as `_use_fused_blocks` (the CNN and MLP
        baselines have no such layers)."""
        layer, name, use_in = LAYER_KERNELS[setting]
        if not any(isinstance(module, layer) for module in self.model.modules()):
            if asked:
                raise ValueError(f"train.{setting} needs a model with {layer.__name__} layers, "
                                 f"the model is {self.config.model.kind!r}")
            return

        def use() -> None:
            module, function = use_in.rsplit(".", 1)
            try:
                use_kernels = getattr(importlib.import_module(module), function)
            except ImportError as exc:
                raise ValueError(f"the {name} needs triton: {exc}") from None
            for net in (self.model, self.target):  # the same config: both can, or neither
                use_kernels(net)

        self._try_kernels(setting, asked, use)

    def _try_kernels(self, setting: str, asked: bool, use):
        """`use()`, which puts one of our Triton kernels to work; where it cannot run, its
        ValueError if `asked` ("on"), else ("auto") a warning and None: the run goes on with
        PyTorch's ops, the same computation, slower."""
        try:
            return use()
        except ValueError as exc:
            if asked:
                raise
            warnings.warn(f"train.{setting} is 'auto', but {exc}: it is off (the same "
                          "computation, slower)", RuntimeWarning, stacklevel=4)
            return None

    def save(self) -> Path | None:
        if self.out_dir is None:
            return None
        return save_checkpoint(self.state_dict(), self.out_dir / CHECKPOINT)

    def _resume(self) -> None:
        """Continue from OUT/checkpoint.pt and record in metrics.jsonl what was restored."""
        if self.out_dir is None:
            raise ValueError("resume needs an output directory")
        path = self.out_dir / CHECKPOINT
        state = load_checkpoint(path)  # on the CPU; each piece is moved to self.device below
        if "optimizer" not in state:
            raise CheckpointError(f"{path} is an exported agent without optimizer state; "
                                  "only a run's own checkpoint can be resumed")
        # Validated first, so fields added since the checkpoint was written take their defaults.
        stored = experiment_from_dict(state["config"]).to_dict()
        diff = config_diff(stored, self.config.to_dict(), ignore=EXTENDABLE)
        if diff:
            raise CheckpointError(f"{path} was trained with a different config: " + "; ".join(diff))
        if state["generator"].numel() != self.generator.get_state().numel():
            raise CheckpointError(f"{path} was written on another kind of device than "
                                  f"{self.device.type}, and random generators' states do not move "
                                  "between kinds: resume it on the kind it trained on (its agent "
                                  "acts anywhere: `hrm_agent export`)")
        device = self.device
        load_module_state(self.model, state["model"], "checkpoint model")
        load_module_state(self.target, state["target"], "checkpoint target")
        # Moves the moments, and the step counts (AdamATan2.load_state_dict), to the
        # parameters' device.
        self.optimizer.load_state_dict(state["optimizer"])
        self.task_optimizer.load_state_dict(state["task_optimizer"])
        self.replay.load_state_dict(state["replay"])
        self.env.load_state_dict(state["env"])
        self.obs, self.episode_start = state["obs"].to(device), state["episode_start"].to(device)
        self.agent.seed = Seed(*(z.to(device) for z in state["agent_seed"]))
        self.generator.set_state(state["generator"])
        # (checkpoints written before the window was saved have none: it restarts empty)
        self._window.update((k, v.to(device) if isinstance(v, torch.Tensor) else v)
                            for k, v in state.get("window", {}).items())
        counters = state["counters"]
        self.global_step = counters["global_step"]
        self.step_t.fill_(self.global_step)
        self.env_steps = counters["env_steps"]
        self.train_seconds = counters["train_seconds"]
        self.last_val = state["last_val"]
        self.best_val = state.get("best_val", {})
        torn = self._truncate_metrics()
        # Without train.save_replay the buffer starts empty and refills before learning goes on,
        # so the resumed run collects more env steps than an uninterrupted one would.
        self._append_metrics({
            "kind": "resume", "step": self.global_step, "env_steps": self.env_steps,
            "minutes": self.train_seconds / 60, "replay_restored": "storage" in state["replay"],
            "replay_size": len(self.replay),
            "config_changes": config_diff(stored, self.config.to_dict()),
            "torn_metrics_line_dropped": torn,
        })

    def _claim_out_dir(self, overwrite: bool) -> None:
        used = [self.out_dir / name for name in (CHECKPOINT, METRICS, BEST)
                if (self.out_dir / name).exists()]
        if used and not overwrite:
            raise ValueError(f"{self.out_dir} already holds a run; pass --resume to continue it "
                             "or --overwrite to start afresh")
        for path in used:
            path.unlink()

    def _truncate_metrics(self) -> bool:
        """Drop the metric lines written after the checkpoint, so a resumed run has no
        duplicates; return whether the last line was torn (a kill mid-write) and dropped."""
        path = self.out_dir / METRICS
        if not path.is_file():
            return False
        records, torn = read_records(path)
        kept = [r for r in records if r["step"] <= self.global_step]
        tmp = path.with_name(path.name + ".tmp")  # a kill now must not lose the history
        tmp.write_text("".join(strict_json(r) + "\n" for r in kept))
        os.replace(tmp, path)
        return torn


def read_records(path: str | Path) -> tuple[list[dict], bool]:
    """The records of a metrics.jsonl (none if it is missing) and whether its last line was torn
    (a kill mid-write, or a write in flight) and dropped; a bad line elsewhere is an error that
    names the file and the line."""
    path = Path(path)
    lines = path.read_text().splitlines() if path.is_file() else []
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                return records, True
            raise ValueError(f"{path}, line {number}: not a JSON record ({exc}); "
                             "fix or delete that line") from None
    return records, False


def run_training(profile: str | None, out: str | Path, *, carry_z: bool | None = None,
                 overrides: list[str] | tuple[str, ...] = (), steps: int = 0, minutes: float = 0.0,
                 resume: bool = False, overwrite: bool = False, progress: bool = True
                 ) -> dict[str, float]:
    """Train `profile` (None: DEFAULT_PROFILE) into `out` (the CLI's `train`); `steps`/`minutes`
    > 0 override `total_steps`/`max_minutes`. Returns the last validation.

    With `resume` the config is the one in `out`'s checkpoint: `overrides` may change only the
    EXTENDABLE fields, and a `profile` or `carry_z` given must agree with the checkpoint."""
    overrides = list(overrides)
    if steps:
        overrides.append(f"train.total_steps={steps}")
    if minutes:
        overrides.append(f"train.max_minutes={minutes}")
    if resume:
        if overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite deletes it; "
                             "give one of them")
        config = resumed_config(out, overrides, profile=profile, carry_z=carry_z)
    else:
        config = load_profile(profile or DEFAULT_PROFILE, overrides + _carry_override(carry_z))
    trainer = Trainer(config, out, resume=resume, overwrite=overwrite)
    with trainer.stop_on_signals():
        return trainer.train(progress=progress)


def _carry_override(carry_z: bool | None) -> list[str]:
    return [] if carry_z is None else [f"train.carry_z={str(carry_z).lower()}"]


def resumed_config(out: str | Path, overrides: list[str], *, profile: str | None = None,
                   carry_z: bool | None = None) -> ExperimentConfig:
    """The config stored in `out`'s checkpoint with `overrides` of EXTENDABLE fields applied;
    a ConfigError names any other override, or what a given `profile`/`carry_z` contradicts."""
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key not in EXTENDABLE:
            raise ConfigError(f"--set {text!r}: a resumed run keeps the config in its checkpoint; "
                              f"only {', '.join(EXTENDABLE)} may change")
    stored = load_checkpoint(Path(out) / CHECKPOINT)["config"]
    config = experiment_from_dict(apply_overrides(stored, overrides))
    flags = [f"--profile {profile}"] if profile else []
    flags += [] if carry_z is None else ["--carry-z" if carry_z else "--reset-z"]
    if flags:
        given = (load_profile(profile, overrides + _carry_override(carry_z)) if profile else
                 experiment_from_dict(apply_overrides(config.to_dict(), _carry_override(carry_z))))
        diff = config_diff(config.to_dict(), given.to_dict(), ignore=EXTENDABLE)
        if diff:
            more = f"; {len(diff) - 3} more" if len(diff) > 3 else ""
            raise ConfigError(f"{' '.join(flags)} contradicts the run in {out} (checkpoint != "
                              f"given: {'; '.join(diff[:3])}{more}); leave it out to resume")
    return config


def config_of_checkpoint(state: dict[str, Any]) -> ExperimentConfig:
    return experiment_from_dict(state["config"])


def load_agent(path: str | Path, device="cpu", *, compile: bool = False
               ) -> tuple[QNetwork, ExperimentConfig]:
    """The online network and config of a checkpoint, ready to act (eval mode) on `device`.
    `compile`: torch.compile it, for long rollouts (evaluation, analysis): on 2 CPU cores the
    acting forward runs 2-4x faster after a compile of seconds, and agents of one architecture
    share the compiled code. Compiled on a CPU, "auto" attention becomes explicit math, 1.5x
    faster there than SDPA (docs/measurements.md). In bf16 the compiled kernels round
    differently, which an untrained HRM's recurrence amplifies: other Q, not worse ones."""
    state = load_checkpoint(path)  # on the CPU; load_state_dict copies into the device's model
    config = config_of_checkpoint(state)
    device = torch.device(device)
    compile = compile and can_compile(device, "compile=True asks for torch.compile")
    if compile and device.type == "cpu" and getattr(config.model, "attn_backend", "") == "auto":
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, attn_backend="math"))
    model = build_model(config.model).to(device)
    load_module_state(model, state["model"], f"model in {path}")
    model.eval()
    if compile:
        model.compile()
    return model, config


def write_config(directory: Path, config: dict[str, Any]) -> None:
    """A run's (or an exported agent's) config as `directory/CONFIG`."""
    (directory / CONFIG).write_text(json.dumps(config, indent=2))


def agent_state(state: dict[str, Any]) -> dict[str, Any]:
    """What acting needs of a checkpoint (config, online net, counters, last validation): small
    enough to commit, loadable by `load_agent`."""
    return {key: state[key] for key in ("config", "model", "counters", "last_val")}


def _better(val: dict[str, float], best: dict[str, float]) -> bool:
    """Higher success wins; at equal success, shorter episodes."""
    if not best:
        return True
    return ((val["success_rate"], -val["mean_episode_length"])
            > (best["success_rate"], -best["mean_episode_length"]))


def export_agent(checkpoint: str | Path, out: str | Path) -> Path:
    """The agent of a run's checkpoint, as `agent_state`, written to `out`."""
    return save_checkpoint(agent_state(load_checkpoint(checkpoint)), out)
