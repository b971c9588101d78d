"""Model speed: `python -m hrm_agent bench model --json`.

For the paper architecture (541,186 parameters) and the CPU profile's model, at both env sequence
lengths (121 four-rooms, 143 maze), on this machine's default device (CPU here):

- `act_s`: one acting forward, all segments without gradient, `model(x, model.init_seed(B))`;
- `train_s`: one optimizer step as the trainer takes it: one differentiable `segment` from the
  init seed, MSE loss on Q, backward, AdamATan2 + SignSGD step;
- the FLOPs of one segment forward (`segment_flops`, counted analytically) and the GFLOP/s
  achieved by each; the attention kernel used; the parameter count.

Then, for the CPU model at sequence length 121: eager fp32 vs bf16 autocast (dtype='bfloat16')
vs compiled in fp32 and in bf16 (failures are reported as strings), and one vs the default
number of intra-op threads. Timings are means over a few repetitions after a warm-up (at a
small batch for the paper model, whose full-batch forward takes tens of seconds on a CPU).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hrm_agent.models.hrm import HRMConfig, HRMQNetwork
from hrm_agent.models.layers import swiglu_width
from hrm_agent.optim import make_optimizers

SEQ_LENS = (121, 143)  # four-rooms, maze
CPU_PROFILE = "cpu-fourrooms"
FALLBACK_CPU_CONFIG = HRMConfig(seq_len=121, hidden_size=64, H_layers=1, L_layers=1,
                                H_cycles=1, L_cycles=2, segments=4)


def cpu_config() -> HRMConfig:
    """The CPU profile's model if that profile exists, else a small stand-in."""
    from hrm_agent import experiment

    if (Path(experiment.__file__).parent / "profiles" / f"{CPU_PROFILE}.toml").is_file():
        return experiment.load_profile(CPU_PROFILE).model
    return FALLBACK_CPU_CONFIG


def block_flops(config: HRMConfig, batch: int) -> int:
    """One pass through one block: 2·tokens·(linear weights) + 4·S²·D for QKᵀ and AV."""
    s, d = config.positions, config.hidden_size
    width = swiglu_width(d, config.expansion)
    linear = d * 3 * d + d * d + d * 2 * width + width * d  # qkv, o, gate_up, down
    return batch * (2 * s * linear + 4 * s * s * d)


def segment_flops(config: HRMConfig, batch: int) -> int:
    """Multiply-add FLOPs (×2) of one segment forward: H_cycles·L_cycles L-calls of L_layers
    blocks and H_cycles H-calls of H_layers blocks, plus reading Q off the output layer.
    Norms, RoPE, softmax and other elementwise work are not counted."""
    c = config
    passes = c.H_cycles * c.L_cycles * c.L_layers + c.H_cycles * c.H_layers
    return passes * block_flops(c, batch) + batch * 2 * c.hidden_size * c.num_actions


def train_step_flops(config: HRMConfig, batch: int) -> int:
    """A training step: the segment forward plus about twice the forward FLOPs of the part that
    carries gradient (the last L and the last H call) for the backward."""
    c = config
    grad_passes = c.L_layers + c.H_layers
    grad = grad_passes * block_flops(c, batch) + batch * 2 * c.hidden_size * c.num_actions
    return segment_flops(c, batch) + 2 * grad


def _observations(config: HRMConfig, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, config.seq_len), generator=g)


def _acting(model: HRMQNetwork, batch: int):
    x = _observations(model.config, batch)

    def act():
        with torch.no_grad():
            return model(x, model.init_seed(batch)).q

    return act


def _training(model: HRMQNetwork, batch: int):
    x = _observations(model.config, batch)
    target = torch.randn(batch, model.config.num_actions,
                         generator=torch.Generator().manual_seed(1))
    adam, sign = make_optimizers(model, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.999),
                                 task_lr=1e-2, task_weight_decay=0.1)

    def step():
        _, q = model.segment(model.carry_from_seed(model.init_seed(batch)), x)
        loss = F.mse_loss(q, target)
        adam.zero_grad(set_to_none=True)
        sign.zero_grad(set_to_none=True)
        loss.backward()
        adam.step()
        sign.step()
        return loss

    return step


def _mean_seconds(fn, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def measure(config: HRMConfig, batch: int, act_reps: int, train_reps: int,
            warmup_batch: int | None = None, compiled: bool = False) -> dict:
    """Acting and training-step times of a fresh model of `config` at `batch`."""
    torch.manual_seed(0)
    model = HRMQNetwork(config)
    if compiled:
        model.compile()
    warm = warmup_batch or batch
    _acting(model, warm)()
    _training(model, warm)()
    act_s = _mean_seconds(_acting(model, batch), act_reps)
    train_s = _mean_seconds(_training(model, batch), train_reps)
    seg = segment_flops(config, batch)
    return {
        "act_s": round(act_s, 4),
        "act_gflops": round(config.segments * seg / act_s / 1e9, 2),
        "train_s": round(train_s, 4),
        "train_gflops": round(train_step_flops(config, batch) / train_s / 1e9, 2),
        "segment_gflop": round(seg / 1e9, 3),
    }


def _describe(config: HRMConfig) -> str:
    c = config
    return (f"hidden {c.hidden_size}, heads {c.num_heads}, {c.H_layers}+{c.L_layers} layers, "
            f"H_cycles {c.H_cycles}, L_cycles {c.L_cycles}, segments {c.segments}")


def _variant(config: HRMConfig, compiled: bool, batch: int, reps: int) -> dict | str:
    try:
        start = time.perf_counter()
        result = measure(config, batch, reps, reps, compiled=compiled)
        result["with_warmup_s"] = round(time.perf_counter() - start, 2)
        return result
    except Exception as exc:  # noqa: BLE001  (report, e.g. no C compiler for torch.compile)
        return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def run(quick: bool = False) -> dict:
    batch = 32 if quick else 256
    paper_reps = (1, 1) if quick else (1, 3)
    cpu_reps = (1, 1) if quick else (3, 5)
    threads = torch.get_num_threads()
    result: dict = {"torch": torch.__version__, "torch_threads": threads, "batch": batch}
    cpu = cpu_config()
    models = {"paper": HRMConfig(seq_len=SEQ_LENS[0]), "cpu": cpu}
    for name, base in models.items():
        model = HRMQNetwork(base)
        result[f"{name}_model"] = _describe(base)
        result[f"{name}_parameters"] = model.num_parameters()
        result[f"{name}_attention"] = f"{base.attn_backend}->{model.attention_backend()}"
        result[f"{name}_dtype"] = str(model.compute_dtype()).removeprefix("torch.")
        for seq_len in SEQ_LENS:
            config = dataclasses.replace(base, seq_len=seq_len)
            warm = min(batch, 4) if name == "paper" else None
            reps = paper_reps if name == "paper" else cpu_reps
            for key, value in measure(config, batch, *reps, warmup_batch=warm).items():
                result[f"{name}_S{seq_len}_{key}"] = value

    # Precision and compilation, CPU model at four-rooms length.
    config = dataclasses.replace(cpu, seq_len=SEQ_LENS[0])
    variant_reps = 1 if quick else 3
    variants = {
        "eager_fp32": (dataclasses.replace(config, dtype="float32"), False),
        "bf16_autocast": (dataclasses.replace(config, dtype="bfloat16"), False),
        "compile_fp32": (dataclasses.replace(config, dtype="float32"), True),
        "compile_bf16": (dataclasses.replace(config, dtype="bfloat16"), True),  # the CPU profiles'
    }
    for name, (variant, compiled) in variants.items():
        outcome = _variant(variant, compiled, batch, variant_reps)
        if isinstance(outcome, str):
            result[f"cpu_{name}"] = outcome
        else:
            for key in ("act_s", "train_s", "with_warmup_s"):
                result[f"cpu_{name}_{key}"] = outcome[key]

    # Intra-op threads: on shared cores, OpenMP threads that spin-wait for each other can make
    # the default slower than one thread.
    if threads > 1:
        try:
            torch.set_num_threads(1)
            one = measure(config, batch, variant_reps, variant_reps)
        finally:
            torch.set_num_threads(threads)
        result["cpu_threads1_act_s"] = one["act_s"]
        result["cpu_threads1_train_s"] = one["train_s"]
        result[f"cpu_threads{threads}_act_s"] = result[f"cpu_S{SEQ_LENS[0]}_act_s"]
        result[f"cpu_threads{threads}_train_s"] = result[f"cpu_S{SEQ_LENS[0]}_train_s"]
    return result
