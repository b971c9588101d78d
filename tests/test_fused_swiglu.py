"""The SwiGLU's hidden layer in Triton (models/fused_swiglu.py): Triton's interpreter runs the
kernels on a CPU (TRITON_INTERPRET, set by conftest.py), and Triton's compiler builds them for
an H100 (sm_90)."""

import pytest
import torch

pytest.importorskip("triton")

from hrm_agent.bench.train import CHECK, check_fused_layers_bf16  # noqa: E402
from hrm_agent.experiment import load_profile  # noqa: E402
from hrm_agent.models import fused, fused_swiglu  # noqa: E402
from hrm_agent.models.layers import SwiGLU  # noqa: E402
from hrm_agent.trainer import PATHS, Trainer  # noqa: E402
from tests.conftest import assert_segment_is_eager, compile_for_h100  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _eager_and_fused(hidden: int = 64):
    torch.manual_seed(0)
    eager = SwiGLU(hidden, 4.0).to(DEVICE)
    fused = SwiGLU(hidden, 4.0).to(DEVICE)
    fused.load_state_dict(eager.state_dict())
    fused_swiglu.use_fused_swiglu(fused)
    return eager, fused


def _output_and_gradients(module, x, dtype, fn=None):
    """The module's output on x (in autocast at `dtype`), and the gradients of a loss on it at x
    and at both weights."""
    x = x.clone().requires_grad_()
    with torch.autocast(DEVICE, dtype=dtype, enabled=dtype != torch.float32):
        y = (fn or module)(x.to(dtype))
    y.float().square().sum().backward()
    return y.float(), x.grad, module.gate_up_proj.weight.grad, module.down_proj.weight.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_swiglu_computes_the_eager_swiglu_and_its_gradients(dtype):
    """122 tokens: a tile of 64 rows with rows past the end. In bf16 the kernels round where
    eager rounds (gate, up, silu, h and each gradient), so the two agree to bf16's rounding."""
    eager, fused = _eager_and_fused()
    x = torch.randn(2, 61, 64, device=DEVICE)
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 1e-3}
    expected = _output_and_gradients(eager, x, dtype)
    for got, want in zip(_output_and_gradients(fused, x, dtype), expected):
        torch.testing.assert_close(got, want, **tolerance)


def test_compiled_the_fused_swiglu_is_an_opaque_op_with_its_own_backward():
    """torch.compile calls the kernels as they are, forward and backward (as a compiled
    segment does on CUDA), and the gradients are the eager ones."""
    eager, fused = _eager_and_fused()
    x = torch.randn(2, 61, 64, device=DEVICE)
    compiled = torch.compile(lambda x: fused(x))
    expected = _output_and_gradients(eager, x, torch.float32)
    for got, want in zip(_output_and_gradients(fused, x, torch.float32, compiled), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_an_hrm_segment_with_the_fused_swiglu_has_the_eager_q_and_gradients():
    """In the HRM (every SwiGLU of both levels fused; a training segment's gradient flows through
    the last L and H updates' SwiGLUs), Q and every gradient are the eager segment's."""
    assert_segment_is_eager(DEVICE, fused_swiglu.use_fused_swiglu, H_layers=1, L_layers=1)


def test_a_compiled_segment_with_all_our_kernels_has_the_eager_q_and_gradients():
    """As the fused mode trains: torch.compile's segment with the fused blocks (gradient-free
    updates) and the fused SwiGLU (the updates with gradient) as opaque ops."""
    def use_all_and_compile(model):
        model.use_fused_blocks()
        fused_swiglu.use_fused_swiglu(model)
        model.compile()

    assert_segment_is_eager(DEVICE, use_all_and_compile, H_layers=2, L_layers=2)


def test_in_bf16_a_block_with_the_fused_swiglu_is_as_close_to_fp32_as_eager():
    """What the fused mode's bench checks on the GPU before the job trains on it."""
    check = check_fused_layers_bf16(torch.device(DEVICE), batch=2)
    assert check["ok"], check
    assert len(check["mean_errors_fused"]) == 6  # the output, and the gradients at x and 4 weights
    assert all(e > 0 for e in check["mean_errors_fused"])  # bf16's rounding, not fp32's


def test_the_fused_swiglu_refuses_what_it_cannot_run(monkeypatch):
    with pytest.raises(ValueError, match="D a power of two >= 16: got x"):
        fused_swiglu.use_fused_swiglu(SwiGLU(48, 4.0))
    monkeypatch.setattr(fused, "INTERPRET", False)  # (where the device check reads it)
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="the fused SwiGLU needs a CUDA device"):
            fused_swiglu.use_fused_swiglu(SwiGLU(64, 4.0))
    config = load_profile("cpu-cnn-fourrooms", [*CHECK[5:], "train.fused_swiglu='on'"])
    with pytest.raises(ValueError, match="train.fused_swiglu needs a model with SwiGLU layers"):
        Trainer(config)


def test_the_fused_mode_fuses_every_swiglu_of_both_nets_and_fused_blocks_none():
    """"fused" has every kernel of ours; "fused-blocks" (the GPU job's fallback) only the
    block kernels, as an H100 trained on them; "auto" is off on a CPU."""
    def swiglus(mode: str) -> list:
        trainer = Trainer(load_profile("paper-fourrooms", [*CHECK, *PATHS[mode],
                                                           "train.compile='off'"]))
        return [m.hidden for net in (trainer.model, trainer.target) for m in net.modules()
                if isinstance(m, SwiGLU)]

    assert all(hidden is fused_swiglu.swiglu_hidden for hidden in swiglus("fused"))
    assert len(swiglus("fused")) == 4  # H and L, one layer each, in both nets
    assert not any(swiglus("fused-blocks")) and not any(swiglus("fast"))
    trainer = Trainer(load_profile("paper-fourrooms", [*CHECK, "train.compile='off'",
                                                       "train.cuda_graphs='off'"]))
    assert trainer.config.train.fused_swiglu == "auto"
    assert all((m.hidden is not None) is (DEVICE == "cuda") for m in trainer.model.modules()
               if isinstance(m, SwiGLU))


COMPILE_FOR_H100 = """
import triton
from triton.backends.compiler import GPUTarget
from hrm_agent.models import fused_swiglu as f
for kernel, pointers in ((f._hidden_kernel, 3), (f._hidden_backward_kernel, 4)):
    names = kernel.arg_names[:pointers]
    constants = dict(D=64, W=256, IEEE=False, BLOCK_M=f.BLOCK_M, BLOCK_W=f.BLOCK_W)
    source = triton.compiler.ASTSource(
        fn=kernel, constexprs=constants,
        attrs={(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in names},
        signature={**dict.fromkeys(names, "*bf16"), "T": "i32",
                   **dict.fromkeys(constants, "constexpr")})
    assert triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}
                          ).asm["cubin"]
    print(kernel.fn.__name__, "ok")
"""


def test_the_kernels_compile_for_an_h100(tmp_path):
    assert compile_for_h100(COMPILE_FOR_H100, tmp_path).count("ok") == 2
