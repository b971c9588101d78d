"""AdamATan2 and SignSGD against float64 references of their formulas (paper-notes §3), the
parameter split of `make_optimizers`, argument checks and state round trips."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from hrm_agent.models.hrm import HRMConfig, HRMQNetwork
from hrm_agent.optim import AdamATan2, SignSGD, make_optimizers
from tests.conftest import compile_for_h100

try:
    import triton  # noqa: F401
except ImportError:
    triton = None
# the foreach update, and fused_optim's kernel: on CUDA where there is a GPU (`make test-cuda`
# runs the fused tests), else on a CPU under Triton's interpreter
FUSED = [pytest.param(False, id="foreach"),
         pytest.param(True, id="fused", marks=pytest.mark.skipif(triton is None, reason="no triton"))]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class AdamATan2Reference:
    """The docstring's formula, float64, one tensor at a time:
        m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
        p <- p (1 - lr wd) - (lr / bc1) atan2(m, sqrt(v) / sqrt(bc2))"""

    def __init__(self, params, lr, betas, wd):
        self.p = [p.detach().double().clone() for p in params]
        self.m = [torch.zeros_like(p) for p in self.p]
        self.v = [torch.zeros_like(p) for p in self.p]
        self.t = [0] * len(self.p)
        self.lr, self.betas, self.wd = lr, betas, wd

    def step(self, grads):
        b1, b2 = self.betas
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = g.double()
            self.t[i] += 1
            t = self.t[i]
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            bc1, bc2 = 1 - b1**t, 1 - b2**t
            self.p[i] = (self.p[i] * (1 - self.lr * self.wd)
                         - self.lr / bc1 * torch.atan2(self.m[i], self.v[i].sqrt() / math.sqrt(bc2)))


def _random_problem(seed: int, shapes, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g).to(device).requires_grad_(True) for s in shapes]
    targets = [torch.randn(s, generator=g).to(device) for s in shapes]
    return params, targets


def _loss(params, targets):
    # A non-quadratic loss so gradients differ in scale and sign from step to step.
    return sum(((p - t) ** 2).sum() + 0.3 * torch.sin(3 * p).sum() for p, t in zip(params, targets))


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.8, 0.95), (0.3, 0.9)])  # lerp's two forms
def test_adam_atan2_matches_float64_reference_over_several_steps(wd, betas, fused):
    shapes = [(5, 3), (7,), ()]
    params, targets = _random_problem(0, shapes, DEVICE if fused else "cpu")
    lr = 3e-2
    ref = AdamATan2Reference(params, lr, betas, wd)
    opt = AdamATan2(params, lr=lr, betas=betas, weight_decay=wd, fused=fused)
    for _ in range(12):
        opt.zero_grad()
        _loss(params, targets).backward()
        ref.step([p.grad for p in params])
        opt.step()
        for p, r in zip(params, ref.p):
            torch.testing.assert_close(p.detach().double(), r, atol=1e-6, rtol=1e-6)


def test_adam_atan2_matches_reference_with_several_param_groups():
    params, targets = _random_problem(1, [(4, 4), (6,), (2, 3)])
    settings = [dict(lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0),
                dict(lr=5e-2, betas=(0.7, 0.99), weight_decay=0.2),
                dict(lr=2e-3, betas=(0.0, 0.5), weight_decay=1.0)]
    refs = [AdamATan2Reference([p], s["lr"], s["betas"], s["weight_decay"])
            for p, s in zip(params, settings)]
    opt = AdamATan2([dict(params=[p], **s) for p, s in zip(params, settings)],
                    lr=123.0, betas=(0.5, 0.5), weight_decay=9.0)  # defaults overridden by groups
    for _ in range(8):
        opt.zero_grad()
        _loss(params, targets).backward()
        for p, ref in zip(params, refs):
            ref.step([p.grad])
        opt.step()
    for p, ref in zip(params, refs):
        torch.testing.assert_close(p.detach().double(), ref.p[0], atol=1e-6, rtol=1e-6)


def test_adam_atan2_skips_parameters_without_gradient():
    params, targets = _random_problem(2, [(3,), (3,)])
    frozen = params[1].detach().clone()
    opt = AdamATan2(params, lr=1e-2, weight_decay=0.5)
    opt.zero_grad()
    _loss(params[:1], targets[:1]).backward()
    opt.step()
    assert params[1].grad is None
    assert torch.equal(params[1].detach(), frozen)  # not even weight-decayed
    assert params[1] not in opt.state


def test_adam_atan2_first_step_size_is_independent_of_gradient_scale():
    # At t=1: m = (1-b1) g, sqrt(v / bc2) = |g|, so the step is sign(g)·(lr/bc1)·atan(1-b1),
    # whatever |g| (atan2 is applied to the uncorrected m, as in the adam-atan2 package).
    p = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    lr, beta1 = 0.1, 0.9
    opt = AdamATan2([p], lr=lr, betas=(beta1, 0.999), weight_decay=0.0)
    (p * torch.tensor([5.0, -0.01, 1e3])).sum().backward()
    opt.step()
    size = lr / (1 - beta1) * math.atan(1 - beta1)
    expected = torch.tensor([1.0, -2.0, 3.0]) - size * torch.tensor([1.0, -1.0, 1.0])
    torch.testing.assert_close(p.detach(), expected)


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_sign_sgd_matches_decay_then_sign_step(wd):
    params, targets = _random_problem(3, [(4, 2), (5,)])
    lr = 0.05
    ref = [p.detach().double().clone() for p in params]
    opt = SignSGD(params, lr=lr, weight_decay=wd)
    for _ in range(5):
        opt.zero_grad()
        _loss(params, targets).backward()
        ref = [r * (1 - lr * wd) - lr * p.grad.double().sign() for r, p in zip(ref, params)]
        opt.step()
        for p, r in zip(params, ref):
            torch.testing.assert_close(p.detach().double(), r, atol=1e-6, rtol=1e-6)


def test_sign_sgd_zero_gradient_only_decays():
    p = torch.tensor([2.0, -4.0], requires_grad=True)
    p.grad = torch.zeros(2)
    SignSGD([p], lr=0.1, weight_decay=0.5).step()
    torch.testing.assert_close(p.detach(), torch.tensor([2.0, -4.0]) * 0.95)


def _tiny_model(**kw) -> HRMQNetwork:
    return HRMQNetwork(HRMConfig(seq_len=9, hidden_size=16, H_layers=1, L_layers=1,
                                 H_cycles=1, L_cycles=1, segments=1, **kw))


def test_make_optimizers_puts_only_the_task_embedding_in_sign_sgd():
    model = _tiny_model()
    adam, sign = make_optimizers(model, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95),
                                 task_lr=1e-2, task_weight_decay=0.1)
    assert isinstance(adam, AdamATan2) and isinstance(sign, SignSGD)
    sign_params = [p for g in sign.param_groups for p in g["params"]]
    adam_params = [p for g in adam.param_groups for p in g["params"]]
    assert len(sign_params) == 1 and sign_params[0] is model.task_embedding
    named = dict(model.named_parameters())
    expected = {id(p) for n, p in named.items() if n != "task_embedding"}
    assert {id(p) for p in adam_params} == expected and len(adam_params) == len(expected)
    assert adam.param_groups[0]["lr"] == 1e-4 and adam.param_groups[0]["betas"] == (0.9, 0.95)
    assert sign.param_groups[0]["lr"] == 1e-2


def test_make_optimizers_without_task_token_has_empty_sign_sgd():
    model = _tiny_model(task_token=False)
    adam, sign = make_optimizers(model, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95),
                                 task_lr=1e-2, task_weight_decay=0.1)
    assert [p for g in sign.param_groups for p in g["params"]] == []
    assert sum(p.numel() for g in adam.param_groups for p in g["params"]) == model.num_parameters()
    # Stepping the empty optimizer is a no-op, not an error.
    x = torch.randint(0, 131, (2, 9))
    model(x, model.init_seed(2)).q.sum().backward()
    sign.step()
    adam.step()


@pytest.mark.parametrize("kwargs", [dict(lr=-1e-3), dict(betas=(1.0, 0.999)),
                                    dict(betas=(0.9, -0.1)), dict(weight_decay=-0.1)])
def test_adam_atan2_invalid_settings_raise_value_error(kwargs):
    with pytest.raises(ValueError, match="AdamATan2"):
        AdamATan2([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(weight_decay=-0.1)])
def test_sign_sgd_invalid_settings_raise_value_error(kwargs):
    with pytest.raises(ValueError, match="SignSGD"):
        SignSGD([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("cls, kwargs", [(AdamATan2, dict(lr=1e-2, weight_decay=0.1)),
                                         (SignSGD, dict(lr=1e-2, weight_decay=0.1))])
def test_state_dict_round_trip_continues_identically(cls, kwargs):
    params, targets = _random_problem(4, [(3, 3), (4,)])

    def train(opt, ps, steps):
        for _ in range(steps):
            opt.zero_grad()
            _loss(ps, targets).backward()
            opt.step()

    opt = cls(params, **kwargs)
    train(opt, params, 3)
    saved_params = [p.detach().clone().requires_grad_(True) for p in params]
    saved_state = copy.deepcopy(opt.state_dict())
    train(opt, params, 4)

    fresh = cls(saved_params, **kwargs)
    fresh.load_state_dict(saved_state)
    train(fresh, saved_params, 4)
    for a, b in zip(params, saved_params):
        assert torch.equal(a.detach(), b.detach())


def test_adam_atan2_reduces_a_quadratic_loss():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(8, 8, generator=g)
    hessian = a @ a.T + 0.5 * torch.eye(8)
    target = torch.randn(8, generator=g)
    x = torch.zeros(8, requires_grad=True)
    opt = AdamATan2([x], lr=0.05, weight_decay=0.0)

    def loss():
        d = x - target
        return 0.5 * d @ hessian @ d

    start = loss().item()
    for _ in range(300):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert loss().item() < 1e-2 * start
    torch.testing.assert_close(x.detach(), target, atol=0.1, rtol=0.0)


@pytest.mark.parametrize("fused", FUSED)
def test_adam_atan2_bias_correction_counts_steps_per_parameter(fused):
    # A parameter that starts receiving gradients later has its own step count (as torch.optim.Adam).
    params, targets = _random_problem(6, [(3,), (4,)], DEVICE if fused else "cpu")
    lr = 2e-2
    ref = AdamATan2Reference(params, lr, (0.9, 0.99), 0.05)
    opt = AdamATan2(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.05, fused=fused)
    for step in range(6):
        opt.zero_grad(set_to_none=True)
        active = params if step >= 3 else params[:1]
        _loss(active, targets[: len(active)]).backward()
        ref.step([p.grad for p in params])
        opt.step()
    for p, r in zip(params, ref.p):
        torch.testing.assert_close(p.detach().double(), r, atol=1e-6, rtol=1e-6)


@pytest.mark.skipif(triton is None, reason="no triton")
def test_the_fused_update_is_the_foreach_update_to_rounding():
    """fused_optim's kernel against the foreach update over a parameter of several programs,
    with lr a 0-d float64 tensor (as the trainer's schedule gives it): p, m and v agree to an
    ulp or two (fma, and on a CPU the interpreter's arctan2, which is not CUDA's atan2f)."""
    params, targets = _random_problem(7, [(3000,), (64, 5)], DEVICE)
    twins = [p.detach().clone().requires_grad_(True) for p in params]
    lr = torch.tensor(0.0, dtype=torch.float64, device=DEVICE)
    foreach = AdamATan2(params, lr=lr, weight_decay=0.1)
    fused = AdamATan2(twins, lr=lr, weight_decay=0.1, fused=True)
    for step in range(5):
        lr.fill_(1e-2 * (step + 1))  # the same tensor in both optimizers' groups
        for opt, ps in ((foreach, params), (fused, twins)):
            opt.zero_grad()
            _loss(ps, targets).backward()
            opt.step()
    for p, q in zip(params, twins):
        for a, b in ((q, p), *((fused.state[q][k], foreach.state[p][k])
                               for k in ("exp_avg", "exp_avg_sq", "step"))):
            torch.testing.assert_close(a, b, rtol=2e-7, atol=2e-7)


@pytest.mark.skipif(triton is None, reason="no triton")
def test_the_fused_update_refuses_what_its_kernel_cannot_update():
    with pytest.raises(ValueError, match="fused AdamATan2 needs contiguous fp32 parameters"):
        AdamATan2([torch.zeros(3, dtype=torch.bfloat16, requires_grad=True)], fused=True)


@pytest.mark.skipif(triton is None, reason="no triton")
def test_a_short_run_with_the_fused_update_is_the_foreach_run():
    """The trainer's AdamATan2 as `train.fused_optimizer` says; both updates make the same
    transitions and weights to rounding (Triton's interpreter on a CPU)."""
    from hrm_agent.bench.train import CHECK, compare_runs
    from hrm_agent.experiment import load_profile
    from hrm_agent.trainer import PATHS, Trainer

    runs = []
    for fused in ("on", "off"):
        torch.manual_seed(0)
        runs.append(Trainer(load_profile("paper-fourrooms", [
            *CHECK, f"train.device='{DEVICE}'", *PATHS["eager"], f"train.fused_optimizer='{fused}'"])))
        runs[-1].train(progress=False)
    assert runs[0].optimizer.fused and not runs[1].optimizer.fused
    diff = compare_runs(*runs)
    assert diff["same_transitions"] and diff["max_weight_diff"] < 1e-6, diff


# Run in a fresh process: under the interpreter, triton.jit makes no compilable kernels.
COMPILE_FOR_H100 = """
import triton
from triton.backends.compiler import GPUTarget
from hrm_agent import fused_optim
signature = dict.fromkeys(("p_ptr", "g_ptr", "m_ptr", "v_ptr"), "*fp32")
signature.update(dict.fromkeys(("step_size_ptr", "bc2_sqrt_ptr", "decay_ptr"), "*fp64"))
signature.update(table_ptr="*i32", **dict.fromkeys(("lerp_weight", "beta2", "one_minus_beta2"), "fp32"))
for decay in (True, False):
    constants = dict(DECAY=decay, BLOCK=fused_optim.BLOCK)
    source = triton.compiler.ASTSource(
        fn=fused_optim._adam_atan2_kernel, constexprs=constants,
        signature={**signature, **dict.fromkeys(constants, "constexpr")})
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert kernel.asm["cubin"]
    print(decay, "ok")
"""


@pytest.mark.skipif(triton is None, reason="no triton")
def test_the_fused_update_compiles_for_an_h100(tmp_path):
    """Triton's compiler builds the kernel for sm_90, CUDA's atan2f (libdevice) linked in: the
    part of the kernel the interpreter replaces, checked without a GPU."""
    assert compile_for_h100(COMPILE_FOR_H100, tmp_path).count("ok") == 2
