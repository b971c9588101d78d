"""RoPE attention with its backward in Triton (models/fused_attention.py): Triton's interpreter
runs the kernels on a CPU (TRITON_INTERPRET, set by conftest.py), and Triton's compiler builds
them for an H100 (sm_90)."""

import pytest
import torch

pytest.importorskip("triton")

from hrm_agent.bench.train import CHECK, check_fused_layers_bf16  # noqa: E402
from hrm_agent.experiment import load_profile  # noqa: E402
from hrm_agent.models import fused, fused_attention  # noqa: E402
from hrm_agent.models.layers import Attention, RotaryEmbedding, grid_angles, sequence_angles  # noqa: E402
from hrm_agent.trainer import PATHS, Trainer  # noqa: E402
from tests.conftest import assert_segment_is_eager, compile_for_h100  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _eager_and_fused(hidden: int = 64, heads: int = 2):
    torch.manual_seed(0)
    eager = Attention(hidden, heads, "math").to(DEVICE)
    fused = Attention(hidden, heads, "math").to(DEVICE)
    fused.load_state_dict(eager.state_dict())
    fused_attention.use_fused_attention(fused)
    return eager, fused


def _output_and_gradients(module, x, rope, dtype, fn=None):
    """The module's output on x (in autocast at `dtype`, the RoPE tables in it), and the
    gradients of a loss on it at x and at both weights."""
    x = x.clone().requires_grad_()
    tables = rope.tables(dtype)
    with torch.autocast(DEVICE, dtype=dtype, enabled=dtype != torch.float32):
        y = (fn or module)(x.to(dtype), tables)
    y.float().square().sum().backward()
    return y.float(), x.grad, module.qkv_proj.weight.grad, module.o_proj.weight.grad


@pytest.mark.parametrize("angles", ["1d", "2d"])
def test_the_fused_attention_computes_the_eager_attention_and_its_gradients(angles):
    """70 positions: two tiles of 64, the second mostly past the end; both RoPEs (the weight
    gradients sum over 140 tokens in another order than eager's: atol 5e-5). (In bf16 the
    eager math rounds the scores to bf16, flash attention and the kernels do not: bf16 is
    checked against fp32, as the GPU job checks it, below.)"""
    eager, fused = _eager_and_fused()
    rope = RotaryEmbedding(sequence_angles(32, 70, 10_000.0) if angles == "1d"
                           else grid_angles(32, 3, 23, 10_000.0, task_token=True)).to(DEVICE)
    x = torch.randn(2, 70, 64, device=DEVICE)
    expected = _output_and_gradients(eager, x, rope, torch.float32)
    for got, want in zip(_output_and_gradients(fused, x, rope, torch.float32), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=5e-5)


def test_in_bf16_a_block_with_the_fused_attention_and_swiglu_is_as_close_to_fp32_as_eager():
    """What the fused mode's bench checks on the GPU before the job trains on it."""
    check = check_fused_layers_bf16(torch.device(DEVICE), batch=2)
    assert check["ok"], check
    assert len(check["mean_errors_fused"]) == 6  # the output, and the gradients at x and 4 weights
    assert all(e > 0 for e in check["mean_errors_fused"])  # bf16's rounding, not fp32's


def test_compiled_the_fused_attention_is_an_opaque_op_with_its_own_backward():
    """torch.compile calls the kernels as they are, forward and backward (as a compiled
    segment does on CUDA), and the gradients are the eager ones."""
    eager, fused = _eager_and_fused()
    rope = RotaryEmbedding(sequence_angles(32, 61, 10_000.0)).to(DEVICE)
    x = torch.randn(2, 61, 64, device=DEVICE)
    compiled = torch.compile(lambda x, tables: fused(x, tables))
    expected = _output_and_gradients(eager, x, rope, torch.float32)
    for got, want in zip(_output_and_gradients(fused, x, rope, torch.float32, compiled), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=5e-5)


def test_an_hrm_segment_with_the_fused_attention_has_the_eager_q_and_gradients():
    """In the HRM (every attention of both levels fused; a training segment's gradient flows
    through the last L and H updates' attention), Q and every gradient are the eager segment's."""
    assert_segment_is_eager(DEVICE, fused_attention.use_fused_attention, H_layers=1, L_layers=1)


def test_a_compiled_segment_with_all_our_kernels_has_the_eager_q_and_gradients():
    """As the fused mode trains: torch.compile's segment with the fused blocks (gradient-free
    updates) and the fused attention and SwiGLU (the updates with gradient) as opaque ops."""
    from hrm_agent.models import fused_swiglu

    def use_all_and_compile(model):
        model.use_fused_blocks()
        fused_attention.use_fused_attention(model)
        fused_swiglu.use_fused_swiglu(model)
        model.compile()

    assert_segment_is_eager(DEVICE, use_all_and_compile, H_layers=2, L_layers=2)


def test_the_fused_attention_refuses_what_it_cannot_run(monkeypatch):
    with pytest.raises(ValueError, match="power-of-two head size >= 16 .* with 2 heads"):
        fused_attention.use_fused_attention(Attention(48, 2, "math"))
    monkeypatch.setattr(fused, "INTERPRET", False)  # (where the device check reads it)
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="the fused attention needs a CUDA device"):
            fused_attention.use_fused_attention(Attention(64, 2, "math"))
    config = load_profile("cpu-cnn-fourrooms", [*CHECK[5:], "train.fused_attention='on'"])
    with pytest.raises(ValueError, match="train.fused_attention needs a model with Attention layers"):
        Trainer(config)


def test_the_fused_mode_fuses_every_attention_and_swiglu_of_both_nets_and_fused_blocks_none():
    """"fused" has every kernel of ours; "fused-blocks" (the GPU job's fallback) only the
    block kernels, as an H100 trained on them; "auto" is off on a CPU."""
    from hrm_agent.models import fused_swiglu
    from hrm_agent.models.layers import SwiGLU

    def layers(overrides: list[str]) -> list:
        trainer = Trainer(load_profile("paper-fourrooms", [*CHECK, *overrides,
                                                           "train.compile='off'"]))
        return [(m.fused if isinstance(m, Attention) else m.hidden)
                for net in (trainer.model, trainer.target) for m in net.modules()
                if isinstance(m, (Attention, SwiGLU))]

    fused = layers(PATHS["fused"])
    assert len(fused) == 8  # H and L, one layer each, in both nets: an attention and a SwiGLU
    assert set(fused) == {fused_attention.attend, fused_swiglu.swiglu_hidden}
    assert not any(layers(PATHS["fused-blocks"])) and not any(layers(PATHS["fast"]))
    auto = layers(["train.cuda_graphs='off'"])
    assert all((f is not None) is (DEVICE == "cuda") for f in auto)


COMPILE_FOR_H100 = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from hrm_agent.models import fused_attention as f
for seq_len in (122, 144):
    for kernel in (f._forward_kernel, f._backward_kv_kernel, f._backward_q_kernel):
        names = [name for name in kernel.arg_names if name.endswith("_ptr")]
        constants = dict(S=seq_len, HEADS=2, HD=32, IEEE=False, BLOCK_M=f.BLOCK_M, BLOCK_N=f.BLOCK_N)
        source = triton.compiler.ASTSource(
            fn=kernel, constexprs=constants,
            attrs={(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in names},
            signature={**{name: "*fp32" if name == "lse_ptr" else "*bf16" for name in names},
                       "sm_scale": "fp32", **dict.fromkeys(constants, "constexpr")})
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": 4, "num_stages": f.STAGES})
        assert compiled.asm["cubin"] and compiled.metadata.shared <= 227 * 1024
        print(kernel.fn.__name__, seq_len, "ok")
"""


def test_the_kernels_compile_for_an_h100(tmp_path):
    assert compile_for_h100(COMPILE_FOR_H100, tmp_path).count("ok") == 6
