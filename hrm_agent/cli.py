"""Command line: `python -m hrm_agent <command>`.

All arguments are declared here, in one place; each command imports its module lazily so
`--help` stays fast and a command never pays for another's imports.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
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
    _print_result(module.run(quick=args.quick), args.json)


def _render(args: argparse.Namespace) -> None:
    from hrm_agent.envs.render import save_env_figures

    for path in save_env_figures(args.out, seed=args.seed):
        print(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hrm_agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("envstats", help="episode statistics of a policy in an environment")
    p.add_argument("--env", choices=["fourrooms", "maze"], required=True)
    p.add_argument("--policy", choices=["random", "oracle"], default="random")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-envs", type=int, default=256, help="envs stepped in parallel")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_envstats)

    p = sub.add_parser("bench", help="speed benchmarks (print figures, assert nothing)")
    p.add_argument("what", choices=["env", "model", "train"])
    p.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_bench)

    p = sub.add_parser("render", help="write PNG renderings of both environments")
    p.add_argument("--out", default="figures")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_render)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as exc:  # bad input: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
