"""Speed benchmarks: `python -m hrm_agent bench {env,model,train,fused} --json`.

A bench that a caller may have to stop (the GPU job's, at a deadline) writes its result so far
to stderr after each measurement (`so_far`), and the caller keeps the last (`last_partial`);
of one that failed, the line that names its error (`error_line`).
"""
from __future__ import annotations

import json
import re
import sys

PARTIAL = "bench, so far: "  # stderr lines: the result after each measurement
ERROR = re.compile(r"[A-Za-z_][\w.]*(Error|Exception)\b")  # a line that names an exception


def so_far(result: dict) -> None:
    """The result so far on stderr, so a caller that must stop the bench keeps what it measured."""
    print(PARTIAL + json.dumps(result), file=sys.stderr, flush=True)


def last_partial(stderr: str) -> dict | None:
    """The last result-so-far a bench wrote to `stderr`, if any."""
    lines = [line for line in stderr.splitlines() if line.startswith(PARTIAL)]
    return json.loads(lines[-1][len(PARTIAL):]) if lines else None


def error_line(output: str) -> str:
    """What a failed process gave as its error, cut to one short line: the last line that names
    an exception (torch's CUDA errors go on with lines of advice), else its last line."""
    lines = output.strip().splitlines() or ["no output"]
    named = [line for line in lines if ERROR.match(line)]
    return (named or lines)[-1][:300]
