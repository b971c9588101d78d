"""Behaviour of the HRM Q-network (paper-notes §2): size, shapes, 1-step gradient, seeds and
carries, attention backends, determinism, config and input errors, dtypes (compile: test_fast_path.py)."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from hrm_agent.models import layers
from hrm_agent.agent import Agent
from hrm_agent.config import ConfigError, build
from hrm_agent.models.hrm import Carry, HRMConfig, HRMQNetwork, Seed
from hrm_agent.models.layers import attention, select_backend

FOURROOMS_LEN, MAZE_LEN = 121, 143


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one intra-op thread is faster, and far faster when the cores are
    shared (OpenMP threads spin-wait for each other under oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(seq_len: int = FOURROOMS_LEN, **kw) -> HRMConfig:
    base = dict(seq_len=seq_len, hidden_size=32, num_heads=2, H_layers=1, L_layers=1,
                H_cycles=1, L_cycles=2, segments=2)
    base.update(kw)
    return HRMConfig(**base)


def observations(batch: int, seq_len: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 131, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


# -- size ---------------------------------------------------------------------------------------
def test_paper_config_has_541186_trainable_parameters_and_init_states_are_buffers():
    model = HRMQNetwork(HRMConfig(seq_len=FOURROOMS_LEN))
    assert model.num_parameters() == 541_186
    # The parameter count does not depend on the sequence length (RoPE tables are buffers).
    assert HRMQNetwork(HRMConfig(seq_len=MAZE_LEN)).num_parameters() == 541_186
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    for name in ("H_init", "L_init"):
        assert name in buffers and name not in params
        assert not buffers[name].requires_grad
        assert name in model.state_dict()  # saved with a checkpoint
    # The task token is a parameter (SignSGD) but not counted among the paper's.
    assert "task_embedding" in params
    assert model.num_parameters() == sum(p.numel() for p in model.parameters()) - 64


# -- shapes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("seq_len", [FOURROOMS_LEN, MAZE_LEN])
def test_output_shapes_for_both_env_sequence_lengths(seq_len):
    model = HRMQNetwork(tiny(seq_len, hidden_size=64, segments=8))
    b = 3
    with torch.no_grad():
        out = model(observations(b, seq_len), model.init_seed(b), trace=True)
        plain = model(observations(b, seq_len), model.init_seed(b))
    assert out.q.shape == (b, 4) and out.q.dtype == torch.float32
    assert out.seed.z_H.shape == (b, 64) and out.seed.z_L.shape == (b, 64)
    z_H, z_L = out.trace
    assert z_H.shape == (9, b, 64) and z_L.shape == (9, b, 64)  # initial state + 8 segments
    assert plain.trace is None
    # The last trace entry is the returned seed; the first is the initial state.
    torch.testing.assert_close(z_H[-1], out.seed.z_H)
    torch.testing.assert_close(z_L[0], model.init_seed(b).z_L)


def test_full_carry_option_gives_per_position_seeds():
    config = tiny(MAZE_LEN, carry="full")
    model = HRMQNetwork(config)
    b = 2
    seed = model.init_seed(b)
    assert seed.z_H.shape == (b, config.positions, 32) == (b, MAZE_LEN + 1, 32)
    with torch.no_grad():
        out = model(observations(b, MAZE_LEN), seed)
        again = model(observations(b, MAZE_LEN), out.seed)
    assert out.seed.z_H.shape == (b, MAZE_LEN + 1, 32)
    assert out.seed.z_L.shape == (b, MAZE_LEN + 1, 32)
    assert again.q.shape == (b, 4)
    reset = model.reset_seed(out.seed, torch.tensor([True, False]))
    torch.testing.assert_close(reset.z_H[0], model.init_seed(1).z_H[0])
    torch.testing.assert_close(reset.z_H[1], out.seed.z_H[1])


# -- 1-step gradient ----------------------------------------------------------------------------
def _record_grad_flags(model: HRMQNetwork):
    calls: list[tuple[str, bool]] = []
    handles = [
        module.register_forward_hook(
            lambda _m, _args, out, name=name: calls.append((name, out.requires_grad)))
        for name, module in (("L", model.L_level), ("H", model.H_level))
    ]
    return calls, handles


def test_one_step_gradient_only_last_L_and_last_H_update_carry_gradient():
    # Paper cycles (H_cycles=2, L_cycles=2: 4 L and 2 H updates per segment), small width.
    model = HRMQNetwork(HRMConfig(seq_len=FOURROOMS_LEN, hidden_size=32, H_layers=1, L_layers=1))
    b = 2
    inputs = observations(b, FOURROOMS_LEN)
    carry = model.carry_from_seed(model.init_seed(b))
    z_H = carry.z_H.clone().requires_grad_(True)
    z_L = carry.z_L.clone().requires_grad_(True)
    calls, handles = _record_grad_flags(model)
    try:
        new_carry, q = model.segment(Carry(z_H, z_L), inputs)
    finally:
        for h in handles:
            h.remove()
    # Execution order: L L H L without gradient, then the last L and the last H with it.
    assert [name for name, _ in calls] == ["L", "L", "H", "L", "L", "H"]
    assert [flag for _, flag in calls] == [False, False, False, False, True, True]
    assert q.requires_grad
    # No gradient reaches the incoming carry: it only enters through no-grad updates.
    grads = torch.autograd.grad(q.sum(), [z_H, z_L], allow_unused=True)
    assert all(g is None for g in grads)
    # ... but every block of both levels gets one.
    model.zero_grad()
    model.segment(model.carry_from_seed(model.init_seed(b)), inputs)[1].sum().backward()
    for name, p in model.named_parameters():
        if name.startswith(("H_level", "L_level", "embed_tokens")) or name == "task_embedding":
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # The returned carry is detached, so the next segment does not backprop into this one.
    assert not new_carry.z_H.requires_grad and not new_carry.z_L.requires_grad
    assert new_carry.z_H.grad_fn is None and new_carry.z_L.grad_fn is None


def test_forward_seed_is_detached_even_with_grad_enabled():
    model = HRMQNetwork(tiny())
    out = model(observations(2, FOURROOMS_LEN), model.init_seed(2))
    assert out.q.requires_grad
    assert not out.seed.z_H.requires_grad and not out.seed.z_L.requires_grad


# -- seeds and carries --------------------------------------------------------------------------
def test_carried_seed_changes_the_output_relative_to_init_seed():
    model = HRMQNetwork(tiny())
    x = observations(3, FOURROOMS_LEN)
    with torch.no_grad():
        first = model(x, model.init_seed(3))
        carried = model(x, first.seed)
        fresh = model(x, model.init_seed(3))
    # The seed is the previous last-token state, not the init.
    assert not torch.allclose(first.seed.z_H, model.init_seed(3).z_H)
    assert not torch.allclose(carried.q, fresh.q)
    torch.testing.assert_close(fresh.q, first.q)  # same seed, same input: same output


def test_carry_from_seed_broadcasts_the_seed_to_every_position():
    model = HRMQNetwork(tiny())
    seed = Seed(torch.randn(3, 32), torch.randn(3, 32))
    carry = model.carry_from_seed(seed)
    assert carry.z_H.shape == carry.z_L.shape == (3, FOURROOMS_LEN + 1, 32)
    for pos in (0, 17, FOURROOMS_LEN):
        torch.testing.assert_close(carry.z_H[:, pos], seed.z_H)
        torch.testing.assert_close(carry.z_L[:, pos], seed.z_L)
    # seed_from_carry takes the last token back.
    back = model.seed_from_carry(carry)
    torch.testing.assert_close(back.z_H, seed.z_H)
    torch.testing.assert_close(back.z_L, seed.z_L)


def test_init_seed_is_the_H_init_L_init_buffers():
    model = HRMQNetwork(tiny())
    seed = model.init_seed(4)
    assert seed.z_H.shape == (4, 32)
    for row in range(4):
        torch.testing.assert_close(seed.z_H[row], model.H_init)
        torch.testing.assert_close(seed.z_L[row], model.L_init)
    assert not torch.equal(model.H_init, model.L_init)


def test_reset_seed_resets_exactly_the_masked_envs():
    model = HRMQNetwork(tiny())
    seed = Seed(torch.randn(5, 32), torch.randn(5, 32))
    mask = torch.tensor([True, False, True, False, False])
    reset = model.reset_seed(seed, mask)
    for i, m in enumerate(mask.tolist()):
        if m:
            torch.testing.assert_close(reset.z_H[i], model.H_init)
            torch.testing.assert_close(reset.z_L[i], model.L_init)
        else:
            torch.testing.assert_close(reset.z_H[i], seed.z_H[i])
            torch.testing.assert_close(reset.z_L[i], seed.z_L[i])


def _equal_seeds(a: Seed, b: Seed) -> bool:
    return torch.equal(a.z_H, b.z_H) and torch.equal(a.z_L, b.z_L)


def test_agent_carry_z_chains_seeds_and_reset_z_always_starts_from_init():
    model = HRMQNetwork(tiny())
    b = 3
    init = model.init_seed(b)
    no_start = torch.zeros(b, dtype=torch.bool)

    agent = Agent(model, b, carry_z=True)
    steps = [agent.act(observations(b, FOURROOMS_LEN, seed=t),
                       torch.ones(b, dtype=torch.bool) if t == 0 else no_start)
             for t in range(3)]
    assert _equal_seeds(steps[0].prev_seed, init)
    for t in range(2):
        assert _equal_seeds(steps[t + 1].prev_seed, steps[t].seed)
        assert not _equal_seeds(steps[t + 1].prev_seed, init)
    # An episode start in env 1 resets only env 1.
    step = agent.act(observations(b, FOURROOMS_LEN, seed=9), torch.tensor([False, True, False]))
    torch.testing.assert_close(step.prev_seed.z_H[1], model.H_init)
    torch.testing.assert_close(step.prev_seed.z_H[0], steps[-1].seed.z_H[0])

    agent = Agent(model, b, carry_z=False)
    for t in range(3):
        step = agent.act(observations(b, FOURROOMS_LEN, seed=t), no_start)
        assert _equal_seeds(step.prev_seed, init)
        assert not _equal_seeds(step.seed, init)


# -- attention backends -------------------------------------------------------------------------
def _qkv(dtype: torch.dtype, b=2, s=FOURROOMS_LEN + 1, heads=2, hd=32):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(b, s, heads, hd, generator=g).to(dtype) for _ in range(3)]


def test_sdpa_and_math_attention_agree_in_fp32():
    q, k, v = _qkv(torch.float32)
    torch.testing.assert_close(attention(q, k, v, "sdpa"), attention(q, k, v, "math"),
                               atol=1e-5, rtol=1e-5)


def test_sdpa_and_math_attention_agree_in_bf16_within_bf16_tolerance():
    q, k, v = _qkv(torch.bfloat16)
    sdpa, math_ = attention(q, k, v, "sdpa"), attention(q, k, v, "math")
    assert sdpa.dtype == math_.dtype == torch.bfloat16
    torch.testing.assert_close(sdpa.float(), math_.float(), atol=2e-2, rtol=2e-2)
    # And both are close to the fp32 result.
    ref = attention(*(t.float() for t in (q, k, v)), "math")
    torch.testing.assert_close(sdpa.float(), ref, atol=3e-2, rtol=3e-2)


def test_whole_model_sdpa_and_math_backends_agree():
    models = {}
    for backend in ("sdpa", "math"):
        torch.manual_seed(0)
        models[backend] = HRMQNetwork(tiny(attn_backend=backend))
    x = observations(2, FOURROOMS_LEN)
    with torch.no_grad():
        outs = {k: m(x, m.init_seed(2)) for k, m in models.items()}
    torch.testing.assert_close(outs["sdpa"].q, outs["math"].q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["sdpa"].seed.z_H, outs["math"].seed.z_H, atol=1e-5, rtol=1e-5)


def test_select_backend_auto_is_sdpa_for_cpu_tensors():
    for dtype in (torch.float32, torch.bfloat16):
        assert select_backend("auto", torch.empty(0, dtype=dtype)) == "sdpa"
    assert select_backend("sdpa", torch.empty(0)) == "sdpa"
    assert select_backend("math", torch.empty(0)) == "math"


def test_select_backend_flash_on_cpu_raises_a_clear_error():
    with pytest.raises(RuntimeError, match="flash.*auto"):
        select_backend("flash", torch.empty(0, dtype=torch.bfloat16))


def test_select_backend_unknown_name_raises():
    with pytest.raises(ValueError, match="'flsh'.*auto, flash, sdpa, math"):
        select_backend("flsh", torch.empty(0))


def test_select_backend_auto_prefers_flash_for_cuda_half_tensors_when_installed(monkeypatch):
    # Fake only the selection inputs; flash-attn itself is never called.
    monkeypatch.setattr(layers, "flash_attn_available", lambda: True)
    cuda = SimpleNamespace(type="cuda")
    cuda_bf16 = SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, device=cuda)
    cuda_fp16 = SimpleNamespace(is_cuda=True, dtype=torch.float16, device=cuda)
    cuda_fp32 = SimpleNamespace(is_cuda=True, dtype=torch.float32, device=cuda)
    assert select_backend("auto", cuda_bf16) == "flash"
    assert select_backend("auto", cuda_fp16) == "flash"
    assert select_backend("flash", cuda_bf16) == "flash"
    assert select_backend("auto", cuda_fp32) == "sdpa"  # flash has no fp32 kernel
    with pytest.raises(RuntimeError):
        select_backend("flash", cuda_fp32)
    monkeypatch.setattr(layers, "flash_attn_available", lambda: False)
    assert select_backend("auto", cuda_bf16) == "sdpa"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flash_and_math_attention_agree_on_cuda_bf16():
    pytest.importorskip("flash_attn")
    q, k, v = (t.cuda() for t in _qkv(torch.bfloat16))
    torch.testing.assert_close(attention(q, k, v, "flash").float(),
                               attention(q, k, v, "math").float(), atol=2e-2, rtol=2e-2)


# -- determinism --------------------------------------------------------------------------------
def test_same_seed_gives_identical_models_and_outputs_on_cpu():
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = HRMQNetwork(tiny())
        with torch.no_grad():
            outs.append((model(observations(2, FOURROOMS_LEN), model.init_seed(2), trace=True),
                         model.state_dict()))
    (a, sa), (b, sb) = outs
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a.q, b.q)
    assert torch.equal(a.trace[0], b.trace[0]) and torch.equal(a.trace[1], b.trace[1])


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, named", [
    ({"seq_len": 121, "hiden_size": 64}, "hiden_size"),
    ({"seq_len": 121, "hidden_size": 65}, "hidden_size"),
    ({"seq_len": 121, "segments": 0}, "segments"),
    ({"seq_len": 121, "hidden_size": "64"}, "hidden_size"),
    ({"seq_len": 121, "task_token": 1}, "task_token"),
    ({"seq_len": 121, "attn_backend": "flash2"}, "attn_backend"),
    ({"hidden_size": 64}, "seq_len"),
])
def test_config_errors_are_config_errors_naming_the_field(fields, named):
    with pytest.raises(ConfigError, match=named):
        build(HRMConfig, fields)


def test_valid_config_builds():
    config = build(HRMConfig, {"seq_len": 143, "hidden_size": 32, "expansion": 2})
    assert config == HRMConfig(seq_len=143, hidden_size=32, expansion=2.0)
    assert config.positions == 144
    assert dataclasses.replace(config, task_token=False).positions == 143


@pytest.mark.parametrize("shape", [(2, 120), (2, 143), (121,), (2, 1, 121)])
def test_bad_input_shape_to_forward_raises_value_error_naming_the_expected_shape(shape):
    model = HRMQNetwork(tiny())
    x = torch.zeros(shape, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\(B, 121\)"):
        model(x, model.init_seed(2))


def test_zero_segments_in_forward_raises():
    model = HRMQNetwork(tiny())
    with pytest.raises(ValueError, match="segments"):
        model(observations(1, FOURROOMS_LEN), model.init_seed(1), segments=0)


# -- dtype, repr ------------------------------------------------------------------------------
def test_bfloat16_on_cpu_runs_and_q_is_float32():
    torch.manual_seed(0)
    bf16 = HRMQNetwork(tiny(dtype="bfloat16"))
    torch.manual_seed(0)
    fp32 = HRMQNetwork(tiny())
    assert bf16.compute_dtype() == torch.bfloat16 and fp32.compute_dtype() == torch.float32
    x = observations(2, FOURROOMS_LEN)
    with torch.no_grad():
        out = bf16(x, bf16.init_seed(2), trace=True)
        ref = fp32(x, fp32.init_seed(2))
    assert out.q.dtype == torch.float32 and out.trace[0].dtype == torch.float32
    # z is bf16 throughout, as the authors' (half the traffic; the replay stores it so)
    assert bf16.init_seed(2).z_H.dtype == out.seed.z_H.dtype == out.seed.z_L.dtype == torch.bfloat16
    assert fp32.init_seed(2).z_H.dtype == torch.float32
    assert torch.isfinite(out.q).all()
    torch.testing.assert_close(out.q, ref.q, atol=0.1, rtol=0.1)  # bf16 is close to fp32
    # Training under bf16 autocast gives fp32 Q and gradients for the fp32 parameters.
    _, q = bf16.segment(bf16.carry_from_seed(bf16.init_seed(2)), x)
    assert q.dtype == torch.float32
    q.square().mean().backward()
    assert bf16.lm_head.weight.grad.dtype == torch.float32


def test_repr_shows_the_resolved_attention_backend():
    text = repr(HRMQNetwork(tiny()))
    assert "auto->sdpa" in text and "parameters=" in text
    assert "math->math" in repr(HRMQNetwork(tiny(attn_backend="math")))
    assert HRMQNetwork(tiny()).attention_backend() == "sdpa"


# -- ablation options: 2-D RoPE and the mean readout ----------------------------------------------
def _rotate_pairs(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Explicit RoPE: pair i = features (i, i + half) turned by angles[..., i], one 2x2 at a time."""
    half = x.shape[-1] // 2
    out = x.clone()
    for i in range(half):
        c, s = torch.cos(angles[..., i]), torch.sin(angles[..., i])
        a, b = x[..., i], x[..., i + half]
        out[..., i], out[..., i + half] = a * c - b * s, a * s + b * c
    return out


def test_rope2d_turns_half_the_pairs_by_the_row_and_half_by_the_column():
    rows, cols, head_dim, theta = 11, 13, 16, 10_000.0
    model = HRMQNetwork(tiny(seq_len=rows * cols, grid_width=cols, pos_encoding="rope2d"))
    inv_freq = 1.0 / theta ** (torch.arange(0, 8, 2) / 8)  # a 1-D ladder for 4 pairs per axis
    x = torch.randn(2, rows * cols + 1, 2, head_dim, generator=torch.Generator().manual_seed(0))
    rotated = model.rope(x)
    torch.testing.assert_close(rotated[:, 0], x[:, 0])  # the task token sits at (0, 0)
    for r, c in [(0, 0), (0, 12), (4, 7), (10, 3)]:
        p = 1 + r * cols + c
        angles = torch.cat(((r + 1) * inv_freq, (c + 1) * inv_freq))
        torch.testing.assert_close(rotated[:, p], _rotate_pairs(x[:, p], angles))
    # two cells in the same row differ only in the column-angle half (and vice versa)
    same_row = model.rope.cos[1 + 4 * cols + 2] - model.rope.cos[1 + 4 * cols + 9]
    same_col = model.rope.cos[1 + 2 * cols + 5] - model.rope.cos[1 + 8 * cols + 5]
    row_part = torch.tensor([True] * 4 + [False] * 4).repeat(2)  # cos is laid out (pairs, pairs)
    assert (same_row[row_part] == 0).all() and (same_row[~row_part] != 0).all()
    assert (same_col[~row_part] == 0).all() and (same_col[row_part] != 0).all()


def test_rope2d_attention_scores_depend_only_on_the_row_and_column_offsets():
    model = HRMQNetwork(tiny(seq_len=121, grid_width=11, pos_encoding="rope2d"))
    q, k = torch.randn(2, 16, generator=torch.Generator().manual_seed(0)).unbind(0)
    x = torch.zeros(1, 122, 1, 16)

    def score(a: tuple[int, int], b: tuple[int, int]) -> torch.Tensor:
        pa, pb = 1 + a[0] * 11 + a[1], 1 + b[0] * 11 + b[1]
        x.zero_()
        x[0, pa, 0], x[0, pb, 0] = q, k
        out = model.rope(x)[0, :, 0]
        return out[pa] @ out[pb]

    base = score((2, 3), (5, 1))
    torch.testing.assert_close(score((6, 7), (9, 5)), base)  # shifted by (4, 4)
    assert not torch.allclose(score((2, 3), (1, 5)), base)  # the transposed offset differs


def test_rope2d_needs_the_grid_width():
    with pytest.raises(ConfigError, match="grid_width"):
        tiny(pos_encoding="rope2d")
    with pytest.raises(ConfigError, match="grid_width"):
        tiny(pos_encoding="rope2d", grid_width=10)  # 121 is not 10 x anything


def test_default_rope_is_the_paper_one_over_the_flattened_index():
    model = HRMQNetwork(tiny())
    x = torch.randn(1, FOURROOMS_LEN + 1, 1, 16)
    inv_freq = 1.0 / 10_000.0 ** (torch.arange(0, 16, 2) / 16)
    for p in (0, 1, 60, 121):
        torch.testing.assert_close(model.rope(x)[:, p], _rotate_pairs(x[:, p], p * inv_freq))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_tables_cast_once_rotate_exactly_as_the_module(dtype):
    """A segment casts the tables once (`RotaryEmbedding.tables`) instead of in every attention:
    the same rotation, bit for bit."""
    model = HRMQNetwork(tiny())
    x = torch.randn(3, FOURROOMS_LEN + 1, 2, 16).to(dtype)
    tables = model.rope.tables(dtype)
    assert tables.cos.dtype == dtype and torch.equal(tables(x), model.rope(x))


@pytest.mark.parametrize("kind", ["hrm", "transformer"])
def test_mean_readout_is_the_mean_over_observation_tokens_without_the_task_token(kind):
    from hrm_agent.models import TransformerConfig, TransformerQNetwork

    torch.manual_seed(0)
    if kind == "hrm":
        model = HRMQNetwork(tiny(readout="mean"))
    else:
        model = TransformerQNetwork(TransformerConfig(seq_len=FOURROOMS_LEN, hidden_size=32,
                                                      layers=2, readout="mean"))
    with torch.no_grad():  # a task token far from the observation tokens' states
        model.task_embedding.fill_(3.0)
    states = []
    if kind == "hrm":
        model.H_level.register_forward_hook(lambda m, i, out: states.append(out))
    else:
        model.blocks[-1].register_forward_hook(lambda m, i, out: states.append(out))
    x = observations(3, FOURROOMS_LEN)
    _, q = model.segment(model.carry_from_seed(model.init_seed(3)), x)
    z_H = states[-1].detach()
    head = model.lm_head.weight[:4].detach()
    torch.testing.assert_close(q.detach(), z_H[:, 1:].mean(1) @ head.T)
    assert not torch.allclose(q.detach(), z_H.mean(1) @ head.T, atol=1e-4)  # the test can fail


def _embedding_grads(weight, ids, embed):
    """`embed`'s output and weight gradient, the backward run under bf16 autocast."""
    weight = weight.detach().requires_grad_()
    out = embed(weight, ids)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(out.device)
    with torch.autocast(out.device.type, dtype=torch.bfloat16):
        out.backward(grad_out)
    return out.detach(), weight.grad


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_the_one_hot_embedding_is_the_embedding_and_sums_its_gradient_as_it(device):
    """On CUDA the HRM embeds with `_OneHotEmbedding` (its weight gradient one one-hot product,
    not a sort of the ids): the same rows, and the same gradient sums in another order, in
    fp32 even under autocast."""
    weight = torch.randn(131, 64, generator=torch.Generator().manual_seed(0)).to(device)
    ids = observations(32, FOURROOMS_LEN).to(device)  # most ids repeat many times
    ids[0, :5] = torch.tensor([0, 130, 130, 7, 0])
    out, grad = _embedding_grads(weight, ids, layers._OneHotEmbedding.apply)
    ref_out, ref_grad = _embedding_grads(weight, ids, lambda w, i: torch.nn.functional.embedding(i, w))
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)  # absent ids' rows: 0
    if device == "cuda":
        out = layers.embedding(weight.requires_grad_(), ids)
        assert out.grad_fn.name().endswith("_OneHotEmbeddingBackward")
