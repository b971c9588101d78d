"""Command line: `hrm-agent <command>` (or `python -m hrm_agent <command>`).

All arguments are declared here, in one place; each command imports its module lazily so
`--help` stays fast and a command never pays for another's imports.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from hrm_agent.config import strict_json


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(strict_json(result))
    else:
        for key, value in result.items():
            print(f"{key:>28}: {value}")


def _envstats(args: argparse.Namespace) -> None:
    from hrm_agent.envs.stats import envstats

    result = envstats(args.env, args.policy, episodes=args.episodes, seed=args.seed,
                      num_envs=args.num_envs, device=args.device)
    _print_result(result, args.json)


def _bench(args: argparse.Namespace) -> None:
    import importlib

    module = importlib.import_module(f"hrm_agent.bench.{args.what}")
    kwargs = {"quick": args.quick}
    for option, what in (("variants", "fit"), ("profiles", "train"), ("modes", "train")):
        if getattr(args, option) is not None:
            if args.what != what:
                raise ValueError(f"--{option} is an option of `bench {what}` only")
            kwargs[option] = getattr(args, option).split(",")
    _print_result(module.run(**kwargs), args.json)


def _train(args: argparse.Namespace) -> None:
    from hrm_agent.trainer import run_training

    result = run_training(args.profile, args.out, carry_z=args.carry_z, overrides=args.set,
                          resume=args.resume, overwrite=args.overwrite,
                          progress=not args.no_progress)
    _print_result(result, args.json)


def _evaluate(args: argparse.Namespace) -> None:
    from hrm_agent.evaluate import evaluate
    from hrm_agent.trainer import load_agent

    model, config = load_agent(args.checkpoint, device=args.device, compile=args.compile)
    carry_z = config.train.carry_z if args.carry_z is None else args.carry_z
    result = evaluate(model, config.env, carry_z=carry_z, episodes=args.episodes,
                      seed=args.seed, device=args.device)
    _print_result({"checkpoint": str(args.checkpoint), "env": config.env.name,
                   "carry_z": carry_z, **result}, args.json)


def _export(args: argparse.Namespace) -> None:
    from hrm_agent.trainer import export_agent

    print(export_agent(args.checkpoint, args.out))


def _gpu_job(args: argparse.Namespace) -> None:
    from hrm_agent.gpujob import gpu_job

    runs = args.runs.split(",") if args.runs else None
    gpu_job(args.out, minutes=args.minutes, runs=runs, parallel=args.parallel,
            carried=args.carried, device=args.device, toy=args.toy, fast=args.fast,
            work=args.work, bench_maze=args.bench_maze, ptxas=args.ptxas)


def _gpu_import(args: argparse.Namespace) -> None:
    from hrm_agent.gpujob import import_window

    for path in import_window(args.src, args.into, None if args.no_agents else args.agents):
        print(path)


def _render(args: argparse.Namespace) -> None:
    from hrm_agent.envs.render import save_env_figures

    for path in save_env_figures(args.out, seed=args.seed):
        print(path)


# Argument types: argparse turns their ArgumentTypeError into a one-line usage error (exit 2).
def _int_at_least(minimum: int, maximum: int = 2**63 - 1):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value
    return parse


positive_int = _int_at_least(1)
seed_int = _int_at_least(0)  # below 2**63: torch takes 64-bit seeds, and runs derive seed + k


def device(text: str) -> str:
    """A torch device that exists here (torch's own errors are tracebacks, late)."""
    import torch

    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:1, ...)"
                                         ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}, but no CUDA device is available")
    return text


def out_dir(text: str) -> str:
    """An output directory: it may exist, but not as a file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is an existing file, not a directory")
    return text


def out_file(text: str) -> str:
    """An output file: anything but an existing directory."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file name")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hrm-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("envstats", help="episode statistics of a policy in an environment")
    p.add_argument("--env", choices=["fourrooms", "maze"], required=True)
    p.add_argument("--policy", choices=["random", "oracle"], default="random")
    p.add_argument("--episodes", type=positive_int, default=1000)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--num-envs", type=positive_int, default=256, help="envs stepped in parallel")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_envstats)

    p = sub.add_parser("bench", help="benchmarks: speed, and how fast the model fits Q* (print figures, assert nothing)")
    p.add_argument("what", choices=["env", "model", "train", "fit", "fused"],
                   help="fused: the fused block kernel's tilings, timed on CUDA (on a CPU, "
                        "compared under Triton's interpreter, untimed)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    p.add_argument("--variants", metavar="NAME,...",
                   help="fit only: model/lr variants to compare, e.g. lr=0.001,rope2d,mean,rope2d+mean "
                        "(default: lr=0.0003,lr=0.001,lr=0.003)")
    p.add_argument("--profiles", metavar="NAME,...",
                   help="train only: profiles to time (default: the cpu and paper profiles)")
    p.add_argument("--modes", metavar="MODE,...",
                   help="train only: eager, fast (torch.compile + CUDA graphs on CUDA), fused (fast with "
                        "our Triton kernels: the blocks, AdamATan2 and the SwiGLU; CUDA only), "
                        "fused-blocks (the blocks only); default: eager, fast and, on CUDA, fused")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_bench)

    p = sub.add_parser("train", help="train HRM-Agent with DQN")
    p.add_argument("--profile", help="profile name in hrm_agent/profiles (or a .toml path); "
                   "default cpu-fourrooms; with --resume, the checkpoint's config is used")
    carry = p.add_mutually_exclusive_group()
    carry.add_argument("--carry-z", dest="carry_z", action="store_true", default=None,
                       help="carry z through env time (paper: Carry Z)")
    carry.add_argument("--reset-z", dest="carry_z", action="store_false",
                       help="start every env step from H_init/L_init (paper: Reset Z)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile field, e.g. --set train.lr=3e-4 (repeatable); with "
                   "--resume only train.total_steps, train.max_minutes, train.num_threads, "
                   "train.compile, train.cuda_graphs, train.fused_blocks, "
                   "train.fused_optimizer, train.fused_swiglu, model.attn_backend")
    p.add_argument("--out", type=out_dir, required=True,
                   help="run directory (checkpoint, metrics.jsonl)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt, with the config stored there")
    p.add_argument("--overwrite", action="store_true", help="start afresh in a used OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the final validation as JSON")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="greedy evaluation of a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--episodes", type=positive_int, default=1024)
    p.add_argument("--seed", type=seed_int, default=12345)
    p.add_argument("--device", type=device, default="cpu")
    carry = p.add_mutually_exclusive_group()
    carry.add_argument("--carry-z", dest="carry_z", action="store_true", default=None,
                       help="evaluate with Carry Z (default: as trained)")
    carry.add_argument("--reset-z", dest="carry_z", action="store_false",
                       help="evaluate with Reset Z")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the agent: 2-4x faster rollouts on a CPU after a compile of "
                        "seconds (in bf16, other roundings: an untrained HRM's numbers change)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("export", help="strip a checkpoint to the online net + config (for sharing)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", type=out_file, required=True)
    p.set_defaults(func=_export)

    p = sub.add_parser("gpu-job", help="one GPU window: report, smoke test, then train the paper "
                       "runs until the deadline, mirroring checkpoints and metrics into OUT")
    p.add_argument("--out", required=True, help="an empty folder: what the window returns")
    p.add_argument("--from", dest="carried", metavar="DIR",
                   help="resume each run from DIR/<run>/checkpoint.pt when there (pretrained/gpu-runs)")
    p.add_argument("--minutes", type=float, default=8.5,
                   help="wall-clock budget, smoke test and bench included; the runs stop 10 s "
                        "before its end, and a run still checkpointing is killed 35 s after it")
    p.add_argument("--runs", help="comma-separated subset, in priority order (default: all "
                                  "four, the one with the fewest steps so far first)")
    p.add_argument("--parallel", type=int, default=0,
                   help="runs at once; one that ends early hands its place on (default: one "
                        "on the fast path or a CPU, all on the eager path)")
    p.add_argument("--fast", choices=["auto", "bench", "on", "off", "fused"], default="auto",
                   help="the fast path (torch.compile + CUDA graphs); fused: with our Triton "
                        "kernels (on and fused: unmeasured, a failing run retried a step down); "
                        "bench: if `bench train` finds it equal to eager and faster; auto: as "
                        "the last window on this GPU, torch, triton and code found "
                        "(windows.jsonl in --from), else bench")
    p.add_argument("--bench-maze", action="store_true",
                   help="measure (as --fast bench) paper-maze too (the decision stays "
                        "paper-fourrooms'); about 2 minutes of the window")
    p.add_argument("--ptxas", metavar="FILE",
                   help="the ptxas Triton compiles with (or an .xz of it: `make ptxas` writes "
                        ".ptxas/ptxas.xz, CUDA 13.1's), if it builds and runs the block kernel")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: a dry run (with --toy, seconds)")
    p.add_argument("--toy", action="store_true", help="tiny model and batches (the CPU dry run)")
    p.add_argument("--work", help="local folder for the run directories (default: a temp dir)")
    p.set_defaults(func=_gpu_job)

    p = sub.add_parser("gpu-import", help="file a gpu-job window's output into the repo")
    p.add_argument("src", help="the folder the window returned (the job's --out)")
    p.add_argument("--into", default="pretrained/gpu-runs", help="runs and their history")
    p.add_argument("--agents", default="pretrained", help="where improved best agents are exported")
    p.add_argument("--no-agents", action="store_true", help="do not export agents")
    p.set_defaults(func=_gpu_import)

    p = sub.add_parser("render", help="write PNG renderings of both environments")
    p.add_argument("--out", type=out_dir, default="figures")
    p.add_argument("--seed", type=seed_int, default=0)
    p.set_defaults(func=_render)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as exc:  # bad input, a full disk: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
