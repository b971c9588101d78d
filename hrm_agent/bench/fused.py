"""The fused block kernel's tilings: `python -m hrm_agent bench fused --json`.

Times one block pass per tiling (query rows x key rows, warps, pipeline stages, and a cap on
registers per thread: fewer stages and registers, more programs per SM) at the paper's shapes:
batch 256, a paper-size L block (hidden 64, 2 heads, SwiGLU 256) in bf16, with the injection (a
module's first block) and without, at four-rooms' 122 positions and the maze's 144. A pass is
replayed from a CUDA graph of `REPS` calls, as training replays it (no launch overhead between
calls), and each tiling's blocks are compared with those of the reference tiling
(`fused.TILING`). The GPU job trains at the fastest tiling whose blocks are the reference's
(`fastest_tiling`). Each tiling runs in a process of its own, one after another, after all
have compiled in parallel into Triton's cache: a tiling that faults (128x128 did on an H100)
cannot take the others with it, and its error says at which launch it failed ("at"); the
result so far goes to stderr after each (`so_far`). On a CPU, Triton's interpreter runs the
comparison at batch 1, untimed. `--quick`: batch 64.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import torch

from hrm_agent.bench import error_line, so_far

# (query rows, key rows, warps, stages, register cap or 0, heads at once). Compiled for sm_90
# (Triton 3.6, ptxas 12.8) at four-rooms' 122 positions, registers without / with the injection:
# the reference, (64, 64, 4, 3, 0, 0), 215 / 248 and 72 KB of shared memory: two programs per
# SM; at 1 or 2 stages 16-48 KB, so that capped at 168 registers three programs fit, at 128 four
# (four-rooms in one wave), spilling up to 192 and 320 bytes. 128 query rows: one program per
# sequence (K and V computed once), two per SM, four-rooms in one wave; 4 warps at 255
# registers (spilling 72 / 224 bytes), 8 at 128 (112 / 240). 64x64 with 8 warps at 128
# registers: two per SM (16 warps), each matmul split between two warpgroups. All heads at
# once: 36 tensor-core instructions per program, not 40, for 216-250 registers (no spill, two
# per SM), or 184 / 280 bytes spilled at 168 (three). 128x128/8 is left out: it faulted on an
# H100.
TILINGS = [(64, 64, 4, 3, 0, 0), (64, 64, 4, 1, 168, 0), (64, 64, 4, 1, 128, 0),
           (64, 64, 4, 2, 168, 0), (64, 64, 4, 2, 128, 0), (128, 64, 4, 1, 0, 0),
           (128, 64, 8, 1, 128, 0), (64, 64, 8, 1, 128, 0), (64, 64, 4, 1, 0, 1),
           (64, 64, 4, 2, 0, 1), (64, 64, 4, 1, 168, 1)]
SEQ_LENS = (121, 143)  # four-rooms, maze (+1 position: the task token)
REPS, ROUNDS = 16, 10
TIMEOUT_S = 300
MAX_DIFF = 0.125  # see `fastest_tiling`
AT = "at: "  # a tiling process's stage, on stderr (`_done`)


def _graph_time_us(fn) -> float:
    """Mean µs of `fn()` replayed from a CUDA graph of REPS calls."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPS):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(ROUNDS):
        graph.replay()
    end.record()
    end.synchronize()
    return round(start.elapsed_time(end) * 1000 / (REPS * ROUNDS), 2)


@torch.no_grad()
def measure(tiling: tuple[int, ...], batch: int, timed: bool) -> None:
    """In this process, per shape, printed on stdout as soon as it is measured (a later fault
    loses only what was still to come): the largest difference from the reference tiling's
    blocks, whether every output is finite, and (timed) µs per pass, with the weights in bf16
    as training passes them."""
    from hrm_agent.models.fused import block_args, block_weights, launch
    from hrm_agent.models.hrm import HRMConfig, HRMQNetwork

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for seq_len in SEQ_LENS:
        torch.manual_seed(0)
        model = HRMQNetwork(HRMConfig(seq_len=seq_len)).to(device)
        block, rope = model.L_level.layers[0], model.rope.tables(torch.bfloat16)
        weights = block_args(block, rope, block_weights([model.L_level], torch.bfloat16)[0][0])
        x, inj = (torch.randn(batch, seq_len + 1, 64, device=device).bfloat16() for _ in range(2))
        for injected in (True, False):
            shape = f"{seq_len + 1} positions, {'with' if injected else 'no'} injection"
            args = (x, inj if injected else None, *weights)
            out = _done(shape, lambda: launch(*args, tiling=tiling))
            reference = _done(f"{shape}, the reference tiling", lambda: launch(*args))
            row = {"max_diff": (out.float() - reference.float()).abs().max().item(),
                   "finite": bool(out.isfinite().all())}
            if timed:
                row["us_per_pass"] = _done(f"{shape}, timed", lambda: _graph_time_us(
                    lambda: launch(*args, tiling=tiling)))
            print(json.dumps({shape: row}), flush=True)


def _done(stage: str, fn):
    """`fn()`, finished on the GPU, after naming `stage` on stderr: a fault's error says what
    went wrong, not which launch (CUDA reports it at a later call), so the last stage named is
    where it happened."""
    print(AT + stage, file=sys.stderr, flush=True)
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result


def tiling_name(tiling) -> str:
    block_m, block_n, warps, stages, registers, all_heads = tiling
    return (f"{block_m}x{block_n}, {warps} warps, {stages} stage{'s' * (stages != 1)}"
            + (f", {registers} registers" if registers else "")
            + (", heads at once" if all_heads else ""))


def command(tiling: tuple[int, ...], batch: int, what: str) -> list[str]:
    """The process that measures ("time"), checks or compiles `tiling` at `batch` (`measure`)."""
    return [sys.executable, "-m", "hrm_agent.bench.fused", *map(str, tiling), str(batch), what]


def run(quick: bool = False, tilings: list[tuple[int, ...]] | None = None) -> dict:
    from hrm_agent.models.fused import TILING

    tilings = TILINGS if tilings is None else tilings
    cuda = torch.cuda.is_available()
    batch = (64 if quick else 256) if cuda else 1
    env = dict(os.environ, **({} if cuda else {"TRITON_INTERPRET": "1"}))
    if cuda:  # compile every tiling at once (Triton caches them); their timing one at a time
        warm = [subprocess.Popen(command(t, batch, "compile"), env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) for t in tilings]
        for proc in warm:
            try:
                proc.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()  # its timed run compiles it, or reports its timeout
    results = {}
    run_result = {"device": torch.cuda.get_device_name() if cuda else "cpu (interpreter, untimed)",
                  "batch": batch, "reference": tiling_name(TILING), "tilings": results}
    for tiling in tilings:
        result = results[tiling_name(tiling)] = {"tiling": list(tiling)}
        try:
            proc = subprocess.run(command(tiling, batch, "time" if cuda else "check"), env=env,
                                  capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            result["error"] = f"no result in {TIMEOUT_S} s"
        else:
            rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
            if rows:  # what it measured, even if it then failed
                result["shapes"] = {shape: row for measured in rows for shape, row in measured.items()}
            if proc.returncode:
                result["error"] = (error_line(proc.stderr) if proc.stderr.strip()
                                   else f"exit {proc.returncode}")
                stages = [line[len(AT):] for line in proc.stderr.splitlines() if line.startswith(AT)]
                if stages:
                    result["at"] = stages[-1]
        so_far(run_result)
    return run_result


def fastest_tiling(result: dict | None, max_diff: float = MAX_DIFF) -> tuple[int, ...] | None:
    """The tiling of a `run` result with the least µs per pass summed over its shapes, among
    those that ran to the end without an error, timed at every shape whose blocks were finite
    and within `max_diff` of the reference tiling's (a few bf16 roundings at the largest
    outputs; a wrong kernel is off by O(1)); None if there is none."""
    best = None
    for entry in (result or {}).get("tilings", {}).values():
        shapes = entry.get("shapes")
        timed = shapes and all(row.get("finite") and row.get("max_diff", math.inf) <= max_diff
                               and "us_per_pass" in row for row in shapes.values())
        if entry.get("error") or not timed:
            continue
        total = sum(row["us_per_pass"] for row in shapes.values())
        if best is None or total < best[0]:
            best = (total, tuple(entry["tiling"]))
    return best and best[1]


if __name__ == "__main__":  # one tiling, in a process of its own (see `run`)
    *numbers, what = sys.argv[1:]
    *tiling, batch = map(int, numbers)
    measure(tuple(tiling), batch, timed=what == "time")
