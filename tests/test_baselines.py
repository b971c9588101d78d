"""The Q-network interface (models/base.py) and the baselines that plug into it: each kind builds
from its profile and config, has the shapes and trivial state the trainer relies on, and trains,
checkpoints and resumes through the unchanged Trainer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hrm_agent.agent import Agent
from hrm_agent.checkpoint import save_checkpoint
from hrm_agent.config import ConfigError
from hrm_agent.experiment import experiment_from_dict, load_profile
from hrm_agent.models import MODELS, CNNQNetwork, HRMQNetwork, build_model
from hrm_agent.trainer import Trainer, load_agent
from tests.conftest import TINY, tiny_config

SMALL_RUN = ["env.num_envs=8", "train.batch_size=16", "train.buffer_capacity=4096",
             "train.learning_starts=16", "train.val_episodes=16", "train.device='cpu'",
             "train.log_interval=4", "train.val_interval=8", "train.checkpoint_interval=8"]
KINDS = {  # kind -> (profile, overrides that make its model small)
    "hrm": ("paper-fourrooms", TINY),
    "cnn": ("cpu-cnn-fourrooms", SMALL_RUN),
    "transformer": ("cpu-transformer-fourrooms", [*SMALL_RUN, "model.hidden_size=32"]),
    "mlp": ("cpu-cnn-fourrooms", [*SMALL_RUN, "model.kind='mlp'"]),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def observations(batch: int, seq_len: int) -> torch.Tensor:
    return torch.randint(0, 131, (batch, seq_len), generator=torch.Generator().manual_seed(1))


def test_every_registered_kind_is_tested_here():
    assert set(KINDS) == set(MODELS)


@pytest.mark.parametrize("profile, env, kind, grid", [
    ("cpu-cnn-fourrooms", "fourrooms", "cnn", (11, 11)),
    ("cpu-cnn-maze", "maze", "cnn", (11, 13)),
    ("cpu-transformer-fourrooms", "fourrooms", "transformer", (11, 11)),
])
def test_baseline_profiles_build_their_network_on_the_env_grid_with_reset_z(profile, env, kind, grid):
    config = load_profile(profile)
    assert (config.env.name, config.model.kind) == (env, kind)
    built = config.env.make(1)
    assert (built.height, built.width) == grid  # experiment.GRID_SHAPE agrees with the maps
    assert (config.model.seq_len, config.model.grid_width) == (grid[0] * grid[1], grid[1])
    assert config.model.segments == 1 and not config.train.carry_z
    assert isinstance(build_model(config.model), MODELS[kind][1])


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_satisfies_the_interface(kind):
    profile, overrides = KINDS[kind]
    config = load_profile(profile, overrides).model
    model = build_model(config)
    assert model.recurrent is (kind == "hrm")
    b, x = 3, observations(3, config.seq_len)
    seed = model.init_seed(b)
    out = model(x, seed, trace=True)
    assert out.q.shape == (b, 4) and out.q.dtype == torch.float32
    assert out.trace[0].shape[:2] == (config.segments + 1, b)
    carry, q = model.segment(model.carry_from_seed(seed), x)
    assert q.shape == (b, 4) and q.requires_grad
    q.sum().backward()  # trains through the interface alone
    assert all(t.shape[0] == b for t in (*model.seed_from_carry(carry), *out.seed))
    reset = model.reset_seed(out.seed, torch.tensor([True, False, True]))
    assert reset.z_H.shape == out.seed.z_H.shape
    if not model.recurrent:  # the trivial state: zero-width, and Q is that of one segment
        assert seed.z_H.shape == seed.z_L.shape == (b, 0)
        assert carry.z_H.shape == (b, 1, 0) and out.seed.z_H.shape == (b, 0)
        torch.testing.assert_close(model(x, seed, segments=3).q, q.detach())
    with pytest.raises(ValueError, match=rf"\(B, {config.seq_len}\)"):
        model(x[:, :-1], seed)


def test_cnn_reads_the_grid_as_rows_of_grid_width():
    """The flattened observation is row-major: one changed cell changes the first convolution's
    output only in the 3x3 around that cell of the 11x13 grid."""
    model = CNNQNetwork(load_profile("cpu-cnn-maze").model)
    features = []
    model.convs[0].register_forward_hook(lambda module, inputs, out: features.append(out))
    plain = torch.full((1, 143), ord("."))
    agent = plain.clone()
    agent[0, 2 * 13 + 5] = ord("@")  # row 2, column 5
    model.q_values(plain), model.q_values(agent)
    changed = (features[0] != features[1]).any(1)[0].nonzero().tolist()
    assert changed == [[r, c] for r in (1, 2, 3) for c in (4, 5, 6)]


@pytest.mark.parametrize("overrides, message", [
    (["model.kind='rnn'"], r"model.kind='rnn' is not one of 'hrm', 'cnn'"),
    (["model.channels=0"], r"model.channels must be >= 1"),
    (["model.H_layers=2"], r"unknown config field 'model.H_layers'"),
    (["model.segments=8"], r"model.segments must be 1 without recurrence"),
    (["model.grid_width=12"], r"model.grid_width=12 does not"),
])
def test_each_kind_validates_its_own_fields(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_profile("cpu-cnn-fourrooms", overrides)


def test_transformer_has_h_plus_l_layers_of_hrm_blocks_and_validates_rope2d():
    config = load_profile("cpu-transformer-fourrooms").model
    hrm = load_profile("cpu-fourrooms").model
    assert config.layers == hrm.H_layers + hrm.L_layers
    model = build_model(config)
    assert type(model.blocks[0]) is type(HRMQNetwork(hrm).H_level.layers[0])
    with pytest.raises(ConfigError, match="hidden_size / num_heads divisible by 4"):
        load_profile("cpu-transformer-fourrooms", ["model.pos_encoding='rope2d'",
                                                   "model.hidden_size=12", "model.num_heads=2"])


def test_configs_and_agents_from_before_kinds_load_as_the_paper_hrm(tmp_path):
    """A config as the first shipped agents had it (no model.kind, grid_width, pos_encoding or
    readout; model.compile), and an agent saved with it, load as the paper's HRM."""
    data = json.loads((Path(__file__).parent / "data" / "config_before_kinds.json").read_text())
    assert "kind" not in data["model"] and "compile" in data["model"]
    config = experiment_from_dict(data)
    assert config.model.kind == "hrm" and config.model.grid_width == 11
    assert config.model.pos_encoding == "rope" and config.model.readout == "last"
    agent = {"model": build_model(config.model).state_dict(), "config": data}
    save_checkpoint(agent, tmp_path / "agent.pt")
    model, _ = load_agent(tmp_path / "agent.pt")  # strict state-dict load
    assert isinstance(model, HRMQNetwork) and model.config == config.model


def test_a_baseline_trains_and_resumes_through_the_unchanged_trainer_also_under_carry_z(tmp_path):
    """Under Carry Z the replay buffer stores the zero-width seeds; nothing else changes."""
    profile, overrides = KINDS["cnn"]
    config = load_profile(profile, [*overrides, "train.carry_z=true", "train.total_steps=16"])
    trainer = Trainer(config, tmp_path)
    trainer.train(progress=False)
    assert trainer.replay.storage["prev_z_H"].shape[1:] == (0,)
    model, loaded = load_agent(tmp_path / "checkpoint.pt")
    assert loaded.model == config.model
    x = observations(4, config.model.seq_len)
    torch.testing.assert_close(model(x, model.init_seed(4)).q,
                               trainer.model(x, trainer.model.init_seed(4)).q)
    resumed = Trainer(load_profile(profile, [*overrides, "train.carry_z=true",
                                             "train.total_steps=24"]), tmp_path, resume=True)
    assert resumed.train(progress=False)["step"] == 24


def test_agent_acts_with_a_baseline_like_with_the_hrm():
    config = load_profile("cpu-cnn-fourrooms").model
    model = build_model(config)
    agent = Agent(model, 2, carry_z=True)
    step = agent.act(observations(2, config.seq_len), torch.tensor([True, True]))
    assert step.actions.shape == (2,) and step.seed.z_H.shape == (2, 0)


def test_analysis_records_a_baseline_with_an_empty_state():
    from hrm_agent import analysis

    model = build_model(load_profile("cpu-cnn-fourrooms").model)
    for carry_z in (True, False):
        r = analysis.record_rollouts(model, "fourrooms", carry_z=carry_z, num_envs=4, seed=0,
                                     max_steps=5, paper_trace0=True)
        assert r.valid[0].all() and r.z_H.shape[2:] == r.z_L.shape[2:] == (2, 0)  # K = 1 + 1


def test_the_latent_state_analysis_leaves_the_baselines_out(tmp_path):
    """Mixing a CNN among the HRM agents (as pretrained/ does) changes nothing in `analyse`."""
    from hrm_agent import analysis

    hrm_config, cnn_config = tiny_config(), load_profile("cpu-cnn-fourrooms")
    agents = {"a-hrm": hrm_config, "b-cnn": cnn_config, "c-hrm": hrm_config}
    paths = {name: save_checkpoint({"config": c.to_dict(), "model": build_model(c.model).state_dict()},
                                   tmp_path / f"{name}.pt") for name, c in agents.items()}
    kwargs = dict(num_envs=3, seed=0, max_steps=4, n_boot=50)
    mixed = analysis.analyse(paths, "fourrooms", **kwargs)
    alone = analysis.analyse({k: v for k, v in paths.items() if k != "b-cnn"}, "fourrooms", **kwargs)
    assert mixed.solved == alone.solved
    for a, b in zip(mixed.convergence, alone.convergence, strict=True):
        np.testing.assert_array_equal(a.median, b.median)
    with pytest.raises(ValueError, match=r"none of \['b-cnn'\] is a recurrent network"):
        analysis.analyse({"b-cnn": paths["b-cnn"]}, "fourrooms", **kwargs)
