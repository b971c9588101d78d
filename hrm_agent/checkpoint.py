"""Checkpoints: written atomically, read back with errors that say what is wrong.

A checkpoint is a plain dict saved with `torch.save` and loaded with `weights_only=True`, so a
file from elsewhere cannot run code. It always carries the run's config, which is how a loader
knows the shapes to build and how a mismatch is caught before any tensor is copied.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_map

FORMAT = "hrm-agent/1"
CHECKPOINT = "checkpoint.pt"  # a run's checkpoint in its output directory


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not fit the model it is loaded into."""


def _compact(value: Any) -> Any:
    """A tensor that views part of a larger storage, copied alone: `torch.save` writes a view's
    whole storage (a carried seed, the last token of each env's z, would write all of z)."""
    if isinstance(value, torch.Tensor) and value.untyped_storage().nbytes() > value.nbytes:
        return value.clone()
    return value


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` via a temp file in the same folder and an atomic rename, so a
    run killed mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(tree_map(_compact, {"format": FORMAT, **state}), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path`, every tensor on the CPU: the caller moves what it needs to its
    device. (Loading straight to a GPU would also move AdamATan2's `step` counters there, and
    reading them back with `float()` would then sync the device on every optimizer step.)"""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; give the file "
                              f"(a run keeps it as {path / CHECKPOINT})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, not a torch file, pickled code...
        detail = (str(exc).splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: "
                              f"{detail}); is it corrupt or truncated?") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an hrm-agent checkpoint (format {FORMAT!r})")
    for key in ("config", "model"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry")
    return state


def load_module_state(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """`module.load_state_dict` with a message that lists the mismatching tensors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        raise CheckpointError(f"{what} does not fit this model: " + ", ".join(parts))
    module.load_state_dict(state)


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "",
                ignore: tuple[str, ...] = ()) -> list[str]:
    """Human-readable differences between two nested config dicts, except the dotted keys
    in `ignore`."""
    out = []
    for key in sorted(a.keys() | b.keys()):
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if f"{prefix}{key}" in ignore:
            continue
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{key}.", ignore)
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} != {vb!r}")
    return out
