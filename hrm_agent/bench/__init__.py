"""Speed benchmarks: `python -m hrm_agent bench {env,model,train,fused} --json`.

A bench that a caller may have to stop (the GPU job's, at a deadline) writes its result so far
to stderr after each measurement (`so_far`), and the caller keeps the last (`last_partial`).
"""
from __future__ import annotations

import json
import sys

PARTIAL = "bench, so far: "  # stderr lines: the result after each measurement


def so_far(result: dict) -> None:
    """The result so far on stderr, so a caller that must stop the bench keeps what it measured."""
    print(PARTIAL + json.dumps(result), file=sys.stderr, flush=True)


def last_partial(stderr: str) -> dict | None:
    """The last result-so-far a bench wrote to `stderr`, if any."""
    lines = [line for line in stderr.splitlines() if line.startswith(PARTIAL)]
    return json.loads(lines[-1][len(PARTIAL):]) if lines else None
