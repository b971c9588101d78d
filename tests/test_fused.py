"""The fused Triton blocks (models/fused.py). Without a GPU, Triton's interpreter runs the
kernel on the CPU (TRITON_INTERPRET, set by conftest.py before triton is imported), and
Triton's own compiler builds it for an H100 (sm_90), so a kernel that would not compile there
fails here."""
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

from hrm_agent.bench import last_partial  # noqa: E402
from hrm_agent.bench.train import CHECK, check_fast_path, check_fused_bf16  # noqa: E402
from hrm_agent.experiment import load_profile  # noqa: E402
from hrm_agent.models import fused  # noqa: E402
from hrm_agent.models.hrm import HRMConfig, HRMQNetwork  # noqa: E402
from hrm_agent.trainer import PATHS, Trainer  # noqa: E402
from tests.conftest import compile_for_h100, hrm_twins, segment_q_and_gradients  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _module_inputs(seq_len: int):
    """A 2-layer L module (fp32) and its inputs z, injection."""
    torch.manual_seed(0)
    model = HRMQNetwork(HRMConfig(seq_len=seq_len, L_layers=2, attn_backend="sdpa")).to(DEVICE)
    z, injection = (torch.randn(2, seq_len + 1, 64, device=DEVICE) for _ in range(2))
    return model, z, injection


def _run(model, z, injection, fused_blocks: bool):
    with torch.no_grad():
        rope = model.rope.tables(torch.float32)
        if fused_blocks:
            return fused.fused_module(model.L_level, z, injection, rope)
        return model.L_level(z, injection, rope)


@pytest.mark.parametrize("seq_len", [121, 143])  # four-rooms, maze: 2 or 3 tiles of 64 rows
def test_the_fused_blocks_compute_the_eager_blocks_in_fp32(seq_len):
    """Each query tile's attention over every key tile, with the online softmax across them."""
    model, z, injection = _module_inputs(seq_len)
    expected = _run(model, z, injection, fused_blocks=False)
    torch.testing.assert_close(_run(model, z, injection, fused_blocks=True),
                               expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seq_len", [121, 143])
def test_all_heads_at_once_compute_the_blocks_of_head_by_head(seq_len):
    """`_attention_all_heads` (a bench tiling) against `_attention_by_head` (the reference): the
    same blocks but for the order of o_proj's sum (one matmul, not one per head): 1e-6 in fp32,
    a bf16 rounding the other way here and there in bf16."""
    model, z, injection = _module_inputs(seq_len)
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        rope = model.rope.tables(dtype)
        weights = fused.block_weights([model.L_level], dtype)[0][0]
        args = (z.to(dtype), injection.to(dtype),
                *fused.block_args(model.L_level.layers[0], rope, weights))
        torch.testing.assert_close(fused.launch(*args, tiling=(64, 64, 4, 3, 0, 1)),
                                   fused.launch(*args), rtol=tolerance, atol=tolerance)


def test_in_bf16_the_fused_blocks_are_as_close_to_fp32_as_the_eager_blocks():
    """bf16 operands where eager rounds to bf16: the fused blocks' error against the fp32 blocks
    is the eager bf16 blocks' (a rounding bug, e.g. truncating instead of rounding to nearest,
    tripled it). The fused mode's bench checks the same on the GPU."""
    check = check_fused_bf16(torch.device(DEVICE), batch=4)
    assert check["ok"], check
    assert 0.001 < check["mean_error_fused"] < 0.01  # bf16's rounding, not an exact copy of fp32


def test_a_segment_with_fused_blocks_has_the_eager_q_and_gradients():
    """Training: the gradient-free updates run fused, the last L and H updates eagerly with
    gradient (HRM's 1-step gradient), so Q and every gradient are the eager segment's."""
    eager, model = hrm_twins(DEVICE, H_layers=2, L_layers=2)
    model.use_fused_blocks()
    inputs = torch.randint(0, 131, (4, 15), device=DEVICE)
    results = []
    for net in (eager, model):
        results.append(segment_q_and_gradients(net, inputs))
        with torch.no_grad():
            # a gradient-free segment (acting's), all fused: one, as the 8-segment recurrence
            # amplifies rounding ~5x per segment
            results[-1].append(net(inputs, net.init_seed(4), segments=1).q)
    assert len(results[0]) == len(results[1]) > 10
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(DEVICE != "cuda", reason="the interpreter takes many minutes for a run")
def test_a_short_cuda_run_with_fused_blocks_is_the_eager_run():
    """The fused mode (torch.compile with the fused kernels as opaque ops, CUDA graphs) trains
    the CHECK run as the eager path does: the check the GPU job trusts, at its tolerance (an
    H100 measured z within 2.9e-5: the kernel's online softmax sums in another order than
    eager attention's)."""
    check = check_fast_path(torch.device(DEVICE), tolerance=1e-4, modes=("fused",))["fused"]
    assert check["ok"], check


def test_the_fused_mode_runs_the_online_and_target_nets_fused():
    trainer = Trainer(load_profile("paper-fourrooms", [*CHECK, *PATHS["fused"],
                                                       "train.compile='off'"]))
    assert trainer.model.fused_blocks and trainer.target.fused_blocks
    assert not Trainer(load_profile("paper-fourrooms", CHECK)).model.fused_blocks


def test_the_fused_blocks_refuse_what_they_cannot_run(monkeypatch):
    odd = HRMQNetwork(HRMConfig(seq_len=15, hidden_size=48, num_heads=2))
    with pytest.raises(ValueError, match="power-of-two hidden_size >= 16, got 48"):
        odd.use_fused_blocks()
    monkeypatch.setattr(fused, "INTERPRET", False)
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="need a CUDA device"):
            HRMQNetwork(HRMConfig(seq_len=15)).use_fused_blocks()
    config = load_profile("cpu-cnn-fourrooms", [*CHECK[5:], "train.fused_blocks='on'"])
    with pytest.raises(ValueError, match="train.fused_blocks needs the HRM"):
        Trainer(config)


def test_auto_fuses_on_cuda_only_and_only_what_can_run():
    """"auto" (the default) is on for a CUDA HRM, off on a CPU (even with the interpreter
    there), off with a warning for an HRM the kernel cannot run, and silent for a model with
    no blocks to fuse."""
    trainer = Trainer(load_profile("paper-fourrooms", [*CHECK, "train.compile='off'",
                                                       "train.cuda_graphs='off'"]))
    assert trainer.config.train.fused_blocks == "auto"
    assert trainer.model.fused_blocks is (DEVICE == "cuda") is trainer.target.fused_blocks
    cnn = Trainer(load_profile("cpu-cnn-fourrooms", CHECK[5:]))
    cnn._use_fused_blocks(asked=False)  # nothing to fuse, nothing to say
    with pytest.raises(ValueError, match="needs the HRM"):
        cnn._use_fused_blocks(asked=True)
    odd = Trainer(load_profile("paper-fourrooms", [*CHECK, "model.hidden_size=48"]))
    with pytest.warns(RuntimeWarning, match="'auto', but the fused blocks need a power-of-two"):
        odd._use_fused_blocks(asked=False)
    assert not odd.model.fused_blocks


# Run in a fresh process: under the interpreter, triton.jit makes no compilable kernels.
COMPILE_FOR_H100 = """
import sys, triton
from triton.backends.compiler import GPUTarget
from hrm_agent.bench.fused import TILINGS
from hrm_agent.models import fused
pointers = ("x_ptr", "inj_ptr", "out_ptr", "wqkv_ptr", "wo_ptr", "wgu_ptr", "wd_ptr", "cos_ptr",
            "sin_ptr")
signature = {**dict.fromkeys(pointers, "*bf16"), "sm_scale": "fp32"}
# as a launch specialises tensors whose addresses are multiples of 16 bytes (all of them here)
attrs = {(fused._block_kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in pointers}
# the reference with and without the injection; the bench's other tilings with it
variants = [(fused.TILING, False)] + [(tiling, True) for tiling in dict.fromkeys([fused.TILING, *TILINGS])]
for (block_m, block_n, warps, stages, registers, all_heads), has_inj in variants:
    constants = dict(S=int(sys.argv[1]), D=64, HEADS=2, W=256, HAS_INJ=has_inj, IEEE=False,
                     BLOCK_M=block_m, BLOCK_N=block_n, ALL_HEADS=bool(all_heads))
    source = triton.compiler.ASTSource(
        fn=fused._block_kernel, constexprs=constants, attrs=attrs,
        signature={**signature, **dict.fromkeys(constants, "constexpr")})
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={
        "num_warps": warps, "num_stages": stages, **({"maxnreg": registers} if registers else {})})
    # an H100 launches no program that asks for more than 227 KB of shared memory
    assert kernel.asm["cubin"] and kernel.metadata.shared <= 227 * 1024, kernel.metadata.shared
    print(block_m, block_n, warps, stages, registers, all_heads, has_inj, "ok")
"""


@pytest.mark.parametrize("positions", [122, 144])
def test_the_kernel_compiles_for_an_h100(positions, tmp_path):
    """Triton's compiler (and its ptxas) builds the kernel for sm_90 in bf16 at the reference
    tiling, with and without the injection, and at every tiling `bench fused` times: what the
    GPU job compiles, checked without a GPU."""
    from hrm_agent.bench.fused import TILINGS

    printed = compile_for_h100(COMPILE_FOR_H100, tmp_path, str(positions))
    assert printed.count("ok") == 1 + len(set(TILINGS) | {fused.TILING})


def test_bench_fused_compares_each_tiling_in_a_process_of_its_own(capsys):
    """`bench fused` on a CPU: the interpreter runs each tiling beside the kernel's own, in its
    own process; a tiling that cannot run is reported, not fatal."""
    from hrm_agent.bench.fused import run

    result = run(tilings=[(32, 64, 4, 1, 128, 1), (48, 64, 4, 3, 0, 0)])
    assert last_partial(capsys.readouterr().err) == result  # the result so far, after each
    assert result["reference"] == "{}x{}, {} warps, {} stages".format(*fused.TILING)
    name = "32x64, 4 warps, 1 stage, 128 registers, heads at once"
    assert result["tilings"][name]["tiling"] == [32, 64, 4, 1, 128, 1]
    rows = result["tilings"][name]["shapes"]
    assert len(rows) == 4 and all(r["finite"] and r["max_diff"] < 0.05 for r in rows.values()), rows
    failed = result["tilings"]["48x64, 4 warps, 3 stages"]  # not a power of two
    assert "error" in failed and "shapes" not in failed
    assert failed["at"] == "122 positions, with injection"  # its first launch


def test_a_tiling_that_faults_keeps_the_shapes_it_measured_and_says_where_it_stopped(monkeypatch):
    """A fault (as every tiling hit on an H100 on 2026-11-27) is reported at a later call than
    the launch that caused it: the process names each launch before it, and prints each
    shape's row as soon as it has it."""
    from hrm_agent.bench import fused as bench

    script = ("import sys; print('{\"122 positions, with injection\": {\"max_diff\": 0.0, "
              "\"finite\": true}}', flush=True); print('at: 122 positions, no injection', "
              "file=sys.stderr); print('torch.AcceleratorError: CUDA error: an illegal memory "
              "access was encountered', file=sys.stderr); print('Compile with TORCH_USE_CUDA_DSA',"
              " file=sys.stderr); sys.exit(1)")
    monkeypatch.setattr(bench, "command", lambda *args: [sys.executable, "-c", script])
    entry = bench.run(tilings=[(64, 64, 4, 3, 0, 0)])["tilings"]["64x64, 4 warps, 3 stages"]
    assert entry == {"tiling": [64, 64, 4, 3, 0, 0],
                     "shapes": {"122 positions, with injection": {"max_diff": 0.0, "finite": True}},
                     "error": "torch.AcceleratorError: CUDA error: an illegal memory access was "
                              "encountered", "at": "122 positions, no injection"}
    assert bench.fastest_tiling({"tilings": {"t": entry}}) is None  # not measured at every shape


def test_the_tiling_in_use_comes_from_its_variable_and_a_bad_one_is_named():
    """The GPU job hands the runs its `bench fused` choice through `TILING_VAR`."""
    env = {**os.environ, fused.TILING_VAR: "64,64,4,1,128,1"}
    code = "from hrm_agent.models import fused; print(fused.IN_USE)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.stdout.strip() == "(64, 64, 4, 1, 128, 1)", proc.stderr[-2000:]
    assert fused.IN_USE == fused.TILING  # here: no variable
    with pytest.raises(ValueError, match="HRM_AGENT_FUSED_TILING='64,64,4,3,0': expected 'query "):
        fused.parse_tiling("64,64,4,3,0")  # a tiling of before the heads


class _OnCuda:
    """What `fused.checked` reads of a tensor, as a CUDA tensor has it."""

    is_cuda, device = True, "cuda:0"


def test_a_checked_launch_names_the_kernel_a_fault_surfaced_before_or_in(monkeypatch):
    """With `CHECK_VAR` set (the GPU job's retry after a fault), a CUDA fault is reported at
    the kernel it surfaced before or in, not at some later call; never waited for inside a
    capture; and without it, nothing waits."""
    waits, capturing, fault = [], [False], [None]

    def synchronize(device):
        waits.append(device)
        if fault[0] and len(waits) >= fault[0]:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    launched = []
    with fused.checked(_OnCuda(), lambda: "the block kernel"):  # CHECK unset: no waits
        launched.append(1)
    assert waits == [] and launched == [1]

    monkeypatch.setattr(fused, "CHECK", True)
    with fused.checked(_OnCuda(), lambda: "the block kernel"):
        launched.append(2)
    assert waits == ["cuda:0", "cuda:0"]
    capturing[0] = True
    with fused.checked(_OnCuda(), lambda: "the block kernel"):
        pass
    assert len(waits) == 2
    capturing[0] = False
    for after, where in ((3, "before"), (4, "in")):
        waits.clear()
        fault[0] = after - 2  # the first wait fails (before), or the second (in)
        with pytest.raises(RuntimeError, match=f"^a CUDA fault {where} the block kernel: CUDA "
                                               "error: an illegal memory access"):
            with fused.checked(_OnCuda(), lambda: "the block kernel"):
                launched.append(after)
    assert launched == [1, 2, 4]  # a fault before the kernel: it is not launched
    fault[0] = None
    with fused.checked(torch.zeros(1), lambda: "the block kernel"):  # CPU (the interpreter)
        waits.clear()
    assert waits == []
