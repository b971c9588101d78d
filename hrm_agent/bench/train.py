"""Training throughput per profile and execution mode, against the device's memory roofline.

`python -m hrm_agent bench train --json [--profiles paper-fourrooms,paper-maze] [--modes eager,fast]`
runs each profile's trainer on this machine's device (CUDA when there is one) for some seconds
after a warm-up (which includes torch.compile and CUDA-graph capture in the fast mode) and reports:
- optimizer steps/s and env steps/s (timed without the stopwatch, so nothing syncs);
- the share of wall time outside the model (env stepping, replay, bookkeeping), from a second,
  shorter timing with the stopwatch on;
- `kernels`: where the time goes, from the torch profiler over two cycles (one with --quick):
  per optimizer step, the device's busy time (CUDA kernels and copies; on a CPU the aten ops'
  own time), `busy` = that over the unprofiled wall time (well below 1 when the device waits
  for launches or Python), and the `top` kernels by time. A graphed trainer is profiled with
  its graphs unrolled: the captured functions called directly, which launch the same compiled
  kernels one by one, so no profiler ever watches a graph replay (CUPTI and CUDA graphs have a
  history of crashes and hangs together);
- `bytes_per_step`: what the eager kernels of one cycle read and write, per optimizer step (every
  aten op's inputs and outputs, counted once on an eager trainer), and `effective_GBps` = that x
  steps/s, against `copy_GBps`, a measured device-to-device copy (read + write). The paper's
  HRM has 64-wide matmuls and is bound by memory traffic, so this is its roofline; fused code
  moves fewer bytes than it is credited with, so the fast mode's ratio can exceed 1.
Modes: "eager" (train.compile and train.cuda_graphs off) and "fast" (torch.compile, and CUDA
graphs on CUDA). With the fast mode it first checks, on a small fp32 run, that the fast path
trains exactly as the eager one (`fast_path_check`; the GPU job trains fast only if it passes).
After each measurement the result so far goes to stderr (`so_far`), for a caller that may
have to stop the bench. The numbers of one device only compare with the same device's.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hrm_agent.bench import so_far
from hrm_agent.experiment import ExperimentConfig, load_profile
from hrm_agent.graphs import WARMUP, CUDAGraphed
from hrm_agent.trainer import PATHS, Trainer

PROFILES = ("cpu-fourrooms", "cpu-maze", "paper-fourrooms", "paper-maze")
MODES = ("eager", "fast", "fused-blocks", "fused")  # trainer.PATHS
# The equality check: the paper's structure, small, in fp32 (in bf16 compiled and eager kernels
# round differently, and a flipped greedy action makes two runs diverge). One validation episode
# per env, as the paper profiles: the fast path validates through the acting graph then.
CHECK = ["model.hidden_size=32", "model.H_layers=1", "model.L_layers=1", "model.segments=2",
         "model.dtype='float32'", "env.num_envs=8", "train.batch_size=16",
         "train.learning_starts=16", "train.total_steps=24", "train.val_episodes=8",
         "train.val_interval=8", "train.log_interval=4", "train.lr=1e-3", "train.lr_warmup_steps=10"]


def mode_overrides(mode: str) -> list[str]:
    if mode not in MODES:
        raise ValueError(f"unknown bench train mode {mode!r}; modes: {', '.join(MODES)}")
    return PATHS[mode]


def default_modes(device: torch.device) -> list[str]:
    """Every mode the device runs (the fused ones are CUDA kernels), but "fused-blocks", a part
    of "fused" (the GPU job's fallback)."""
    return ["eager", "fast", *(["fused"] if device.type == "cuda" else [])]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, megabytes: int = 256, reps: int = 10) -> float:
    """GB/s of a large device-to-device copy, counting the read and the write."""
    n = megabytes * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    _sync(device)
    return 2 * src.numel() * 4 * reps / (time.perf_counter() - start) / 1e9


class _Traffic(TorchDispatchMode):
    """Bytes of every aten op's tensor inputs and outputs (what unfused kernels move)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not _moves_data(func, (args, kwargs), out):
            return out
        for t in tree_leaves((args, kwargs, out)):
            if isinstance(t, torch.Tensor):
                self.bytes += t.numel() * t.element_size()
        return out


def _moves_data(func, inputs, out) -> bool:
    """False for views (expand, detach, ...) and for ops such as `_unsafe_view` (after every
    batched matmul) that return an input's memory without declaring it a view."""
    if func.is_view:
        return False
    if func._schema.is_mutable:  # in-place: returns its input, and reads and writes it
        return True
    storages = {t.untyped_storage().data_ptr() for t in tree_leaves(inputs) if isinstance(t, torch.Tensor)}
    outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    return not outs or any(t.untyped_storage().data_ptr() not in storages for t in outs)


def _cycle(trainer: Trainer) -> None:
    for _ in range(trainer.config.train.env_steps_per_batch):
        trainer.collect()
    trainer.learn()


def _ready(config: ExperimentConfig) -> Trainer:
    """A trainer whose buffer can be sampled, after a first learn step (lazy state)."""
    trainer = Trainer(config, timed=True)
    tc = config.train
    while len(trainer.replay) < max(tc.learning_starts, tc.batch_size, tc.n_step * config.env.num_envs):
        trainer.collect()
    _cycle(trainer)
    return trainer


def bytes_per_step(config: ExperimentConfig) -> float:
    """Eager kernels' reads + writes of one cycle, per optimizer step."""
    trainer = _ready(config)
    with _Traffic() as traffic:
        _cycle(trainer)
    return traffic.bytes / config.model.segments


def time_profile(config: ExperimentConfig, seconds: float, min_cycles: int, warmup: int,
                 profile_cycles: int = 2) -> dict:
    trainer = _ready(config)
    for _ in range(warmup):  # compilation, CUDA-graph capture
        _cycle(trainer)
    device = trainer.device
    trainer.stopwatch.enabled = False
    step0, env0 = trainer.global_step, trainer.env_steps
    _sync(device)
    start = time.perf_counter()
    cycles = 0
    while cycles < min_cycles or time.perf_counter() - start < seconds:
        _cycle(trainer)
        cycles += 1
    _sync(device)
    wall = time.perf_counter() - start
    rates = {"optimizer_steps_per_s": (trainer.global_step - step0) / wall,
             "env_steps_per_s": (trainer.env_steps - env0) / wall}
    trainer.stopwatch.seconds.clear()  # the shares, on a few cycles (its syncs slow them)
    trainer.stopwatch.enabled = True
    for _ in range(max(2, cycles // 4)):
        with trainer.stopwatch("total"):
            _cycle(trainer)
    parts = trainer.stopwatch.seconds
    model = parts.get("act", 0.0) + parts.get("learn", 0.0)
    trainer.stopwatch.enabled = False
    return {**rates, "share_outside_model": 1.0 - model / parts["total"],
            "seconds": {k: round(v, 3) for k, v in parts.items()},
            "compiled": trainer.compiled, "cuda_graphs": trainer.graphed,
            "kernels": _kernels_or_error(trainer, 1e3 / rates["optimizer_steps_per_s"],
                                         profile_cycles)}


@contextmanager
def _graphs_unrolled(trainer: Trainer) -> Iterator[None]:
    """While inside, the trainer's CUDA-graphed calls run the functions they captured."""
    saved = {(owner, name): getattr(owner, name)
             for owner, name in ((trainer, "learn_minibatch"), (trainer.agent, "forward"))}
    for (owner, name), call in saved.items():
        if isinstance(call, CUDAGraphed):
            setattr(owner, name, call.fn)
    try:
        yield
    finally:
        for (owner, name), call in saved.items():
            setattr(owner, name, call)


def _kernels_or_error(trainer: Trainer, wall_ms_per_step: float, cycles: int) -> dict:
    """The kernel profile, or the error that stopped it: a diagnostic must not cost the GPU job
    the benchmark that decides its path (profilers depend on the machine's CUPTI)."""
    try:
        return kernel_profile(trainer, wall_ms_per_step, cycles)
    except Exception as error:  # noqa: BLE001 (reported, not hidden)
        return {"error": f"{type(error).__name__}: {error}"[:300]}


def kernel_profile(trainer: Trainer, wall_ms_per_step: float, cycles: int = 2,
                   top: int = 40) -> dict:
    """Per optimizer step of `cycles` profiled cycles: the device's busy milliseconds (CUDA
    kernels and copies, or a CPU's aten ops' own time) and how many there were, `busy` = the
    milliseconds over `wall_ms_per_step` (timed unprofiled), and the `top` kernels by time, with
    calls and share of the busy time."""
    cuda = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    kind = DeviceType.CUDA if cuda else DeviceType.CPU
    step0 = trainer.global_step
    with _graphs_unrolled(trainer), torch.profiler.profile(activities=activities) as prof:
        for _ in range(cycles):
            _cycle(trainer)
        _sync(trainer.device)
    steps = trainer.global_step - step0

    def own_us(event) -> float:
        return event.self_device_time_total if cuda else event.self_cpu_time_total

    # A user annotation (e.g. torch.optim's "Optimizer.step#AdamATan2.step") is a range, not a
    # kernel: on CUDA its time spans the kernels inside it, launch gaps included, so counting it
    # would count them twice (as torch's own tables, leave it out).
    events = sorted((e for e in prof.key_averages() if e.device_type == kind and own_us(e) > 0
                     and not e.is_user_annotation), key=own_us, reverse=True)
    busy_us = sum(own_us(e) for e in events)
    ms = busy_us / 1e3 / steps
    return {"ms_per_step": round(ms, 3), "busy": round(ms / wall_ms_per_step, 3),
            "kernels_per_step": round(sum(e.count for e in events) / steps, 1),
            "graphs_unrolled": trainer.graphed,
            "top": [{"name": e.key[:100], "calls_per_step": round(e.count / steps, 2),
                     "ms_per_step": round(own_us(e) / 1e3 / steps, 4),
                     "share": round(own_us(e) / busy_us, 4)} for e in events[:top]]}


def compare_runs(fast: Trainer, eager: Trainer) -> dict:
    """How far a fast run is from the eager one: the same transitions (actions, rewards,
    observations, dones) and last validation, and the largest differences in the stored z and
    in the weights."""
    n = len(eager.replay)
    same = len(fast.replay) == n and fast.global_step == eager.global_step
    z_diff = 0.0
    for key, value in eager.replay.storage.items():
        other = fast.replay.storage[key][:n]
        if key.endswith(("z_H", "z_L")):
            z_diff = max(z_diff, (other.float() - value[:n].float()).abs().max().item())
        else:
            same = same and torch.equal(other, value[:n])
    weight_diff = max((p_f - p_e).abs().max().item()
                      for p_f, p_e in zip(fast.model.parameters(), eager.model.parameters()))
    same_val = {k: v for k, v in fast.last_val.items() if v == v} == {
        k: v for k, v in eager.last_val.items() if v == v}  # (NaN != NaN)
    return {"same_transitions": same and same_val, "max_z_diff": z_diff,
            "max_weight_diff": weight_diff}


def check_run(device: torch.device, mode: str, overrides: tuple[str, ...] = ()) -> Trainer:
    """The CHECK run (Carry Z; `overrides` change it), trained in `mode` from seed 0."""
    torch.manual_seed(0)
    trainer = Trainer(load_profile("paper-fourrooms", [
        *CHECK, *overrides, f"train.device='{device.type}'", *mode_overrides(mode)]))
    trainer.train(progress=False)
    return trainer


def check_against(run: Trainer, eager: Trainer, tolerance: float = 1e-4) -> dict:
    """`compare_runs`, ok when the transitions are the same and z and the weights within
    `tolerance`."""
    result = compare_runs(run, eager)
    result["ok"] = (result["same_transitions"] and result["max_z_diff"] <= tolerance
                    and result["max_weight_diff"] <= tolerance)
    return result


def check_fast_path(device: torch.device, tolerance: float = 1e-4,
                    overrides: tuple[str, ...] = (), modes: tuple[str, ...] = ("fast",)) -> dict:
    """Train the CHECK run eagerly and in each of `modes` from the same seeds, and compare each
    with the eager run: {mode: comparison}."""
    eager = check_run(device, "eager", overrides)
    return {mode: check_against(check_run(device, mode, overrides), eager, tolerance)
            for mode in modes}


def check_fused_bf16(device: torch.device, seq_len: int = 121, batch: int = 8) -> dict:
    """The fused blocks in bf16, which the fp32 CHECK run does not exercise (its dots are fp32
    "ieee" ones): one paper-size L module's mean error against the fp32 module, fused and eager
    (eager through autocast, as training runs it). ok: fused no worse than eager by 20%."""
    from hrm_agent.models.fused import fused_module
    from hrm_agent.models.hrm import HRMConfig, HRMQNetwork

    torch.manual_seed(0)
    model = HRMQNetwork(HRMConfig(seq_len=seq_len)).to(device)
    z, injection = (torch.randn(batch, seq_len + 1, 64, device=device) for _ in range(2))
    z, injection = z.bfloat16(), injection.bfloat16()
    with torch.no_grad():
        exact = model.L_level(z.float(), injection.float(), model.rope.tables(torch.float32))
        rope = model.rope.tables(torch.bfloat16)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            eager = model.L_level(z, injection, rope)
        fused = fused_module(model.L_level, z, injection, rope)
    error = {name: (out.float() - exact).abs().mean().item()
             for name, out in (("eager", eager), ("fused", fused))}
    return {"mean_error_eager": error["eager"], "mean_error_fused": error["fused"],
            "ok": fused.dtype == torch.bfloat16 and error["fused"] <= 1.2 * error["eager"]}


def check_fused_layers_bf16(device: torch.device, seq_len: int = 122, batch: int = 8) -> dict:
    """The fused SwiGLU in bf16, which the fp32 CHECK run does not exercise either: a paper-size
    block's output and gradients (at x and at its four weights) against fp32, with our kernel and
    eager, each through autocast. ok: ours no worse than eager by 20% on every one of them."""
    from hrm_agent.models.fused_swiglu import use_fused_swiglu
    from hrm_agent.models.layers import Block, RotaryEmbedding, sequence_angles

    torch.manual_seed(0)
    blocks = {name: Block(64, 2, 4.0, "auto").to(device) for name in ("exact", "eager", "fused")}
    for block in blocks.values():
        block.load_state_dict(blocks["exact"].state_dict())
    use_fused_swiglu(blocks["fused"])
    rope = RotaryEmbedding(sequence_angles(32, seq_len, 10_000.0)).to(device)
    x = torch.randn(batch, seq_len, 64, device=device)
    results = {}
    for name, block in blocks.items():
        xi = x.clone().requires_grad_()
        dtype = torch.float32 if name == "exact" else torch.bfloat16
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=name != "exact"):
            y = block(xi.to(dtype), rope.tables(dtype))
        y.float().square().mean().backward()
        results[name] = [y.float(), xi.grad, *(p.grad for p in block.parameters())]
    error = {name: [(got - exact).abs().mean().item()
                    for got, exact in zip(results[name], results["exact"])]
             for name in ("eager", "fused")}
    return {"mean_errors_eager": error["eager"], "mean_errors_fused": error["fused"],
            "ok": all(f <= 1.2 * e for f, e in zip(error["fused"], error["eager"]))}


def check_mode(device: torch.device, mode: str, eager: Trainer) -> dict:
    """`mode`'s CHECK run against `eager`'s; for the fused modes, their kernels in bf16 too."""
    check = check_against(check_run(device, mode), eager)
    if mode.startswith("fused"):
        bf16 = check["bf16"] = check_fused_bf16(device)
        check["ok"] = check["ok"] and bf16["ok"]
    if mode == "fused":
        layers = check["layers_bf16"] = check_fused_layers_bf16(device)
        check["ok"] = check["ok"] and layers["ok"]
    return check


def run(quick: bool = False, profiles: list[str] | None = None, modes: list[str] | None = None
        ) -> dict:
    """Each mode in turn, checked (but eager: as "fast_path_check" for fast, else
    "<mode>_check") and then timed on each profile. An error in a checked mode fails its check
    (with the error) and ends that mode, so a new kernel that fails costs the other modes
    nothing (unless it broke the process's CUDA context)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    copy = copy_bandwidth(device, megabytes=64 if quick else 256)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "copy_GBps": round(copy, 1)}
    modes = modes or default_modes(device)
    rows = {}
    for name in profiles or PROFILES:
        base = load_profile(name, [f"train.device='{device.type}'", *mode_overrides("eager")])
        rows[name] = result[name] = {
            "batch_size": base.train.batch_size, "num_envs": base.env.num_envs,
            # eager: compiled code and graph replays bypass the count
            "bytes_per_step": bytes_per_step(base)}
    eager = None
    for mode in modes:
        key = "fast_path_check" if mode == "fast" else f"{mode}_check"
        try:
            if mode != "eager":
                eager = eager or check_run(device, "eager")
                result[key] = check_mode(device, mode, eager)
                so_far(result)
            for name, row in rows.items():
                row[mode] = time_mode(name, mode, device, quick, copy, row["bytes_per_step"])
                so_far(result)
        except Exception as error:
            if mode == "eager":
                raise
            result[key] = {**result.get(key, {}), "ok": False,
                           "error": f"{type(error).__name__}: {error}"[:300]}
            so_far(result)
    return result


def time_mode(name: str, mode: str, device: torch.device, quick: bool, copy: float,
              traffic: float) -> dict:
    """`time_profile` of profile `name` in `mode`, and its bytes against the copy roofline."""
    config = load_profile(name, [f"train.device='{device.type}'", *mode_overrides(mode)])
    timing = time_profile(config, seconds=2.0 if quick else 20.0,
                          min_cycles=1 if (quick or name.startswith("paper")) else 3,
                          warmup=WARMUP + 1,  # past the CUDA-graph capture
                          profile_cycles=1 if quick else 2)
    effective = traffic * timing["optimizer_steps_per_s"] / 1e9
    return {**timing, "effective_GBps": round(effective, 1),
            "fraction_of_copy_roofline": round(effective / copy, 3)}
