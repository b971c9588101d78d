import pytest

from hrm_agent.config import ConfigError, apply_overrides, parse_override
from hrm_agent.experiment import experiment_from_dict, list_profiles, load_profile


def test_profiles_ship_and_the_paper_profiles_are_the_paper():
    assert {"paper-fourrooms", "paper-maze", "cpu-fourrooms", "cpu-maze"} <= set(list_profiles())
    for name, env, seq_len in [("paper-fourrooms", "fourrooms", 121), ("paper-maze", "maze", 143)]:
        cfg = load_profile(name)
        m, t = cfg.model, cfg.train
        assert cfg.env.name == env and m.seq_len == seq_len
        assert (m.hidden_size, m.num_heads, m.H_layers, m.L_layers) == (64, 2, 4, 4)
        assert (m.H_cycles, m.L_cycles, m.segments) == (2, 2, 8)
        assert (t.batch_size, t.buffer_capacity, cfg.env.num_envs) == (256, 2**20, 256)
        assert (t.gamma, t.target_decay, t.lr, t.lr_warmup_steps) == (0.95, 0.999, 1e-4, 10_000)
        assert (t.eps_start, t.eps_end, t.eps_decay_steps) == (1.0, 0.33, 300_000)
        assert (t.beta1, t.beta2, t.task_lr, t.task_weight_decay) == (0.9, 0.999, 1e-2, 0.1)
        assert t.target_init == "independent" and t.carry_z
        assert cfg.env.p_change == 0.05 and cfg.env.max_steps == 80
        assert not t.save_replay  # 2^20 transitions: GPU checkpoints stay small


def test_cpu_profiles_checkpoint_the_replay_buffer_so_a_resume_is_exact():
    for name in ("cpu-fourrooms", "cpu-maze"):
        assert load_profile(name).train.save_replay


def test_overrides_are_typed_and_nested():
    cfg = load_profile("paper-maze", ["train.lr=3e-4", "train.carry_z=false", "model.H_layers=2"])
    assert cfg.train.lr == 3e-4 and cfg.train.carry_z is False and cfg.model.H_layers == 2
    assert parse_override("env.name=maze") == (["env", "name"], "maze")
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


@pytest.mark.parametrize("overrides, message", [
    (["train.lrr=1e-3"], r"unknown config field 'train.lrr' \(did you mean 'train.lr'\?\)"),
    (["train.gamma=1.5"], r"train.gamma must be in \[0, 1\]"),
    (["train.batch_size=0"], r"train.batch_size must be >= 1"),
    (["train.batch_size=2.5"], r"train.batch_size=2.5 must be an integer"),
    (["train.carry_z=1"], r"train.carry_z=1 must be true or false"),
    (["env.name=sokoban"], r"env.name='sokoban' is not one of"),
    (["model.seq_len=99"], r"model.seq_len=99 does not match env"),
    (["train.eps_mode='batch'"], r"eps_mode='batch'.*carry_z=false"),
    (["bogus.x=1"], r"unknown profile section"),
    (["train"], r"--set expects key=value"),
])
def test_bad_config_values_get_an_error_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_profile("paper-fourrooms", overrides)


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(ConfigError, match="no profile 'cpu-fourroom'.*cpu-fourrooms"):
        load_profile("cpu-fourroom")


@pytest.mark.parametrize("legacy, expected", [(True, "on"), (False, "auto")])
def test_a_config_with_the_old_model_compile_field_loads_as_train_compile(legacy, expected):
    """Checkpoints and agents from before train.compile stored model.compile (a bool)."""
    from hrm_agent.experiment import experiment_from_dict

    data = load_profile("paper-fourrooms").to_dict()
    del data["train"]["compile"]
    data["model"]["compile"] = legacy
    assert experiment_from_dict(data).train.compile == expected


def test_a_config_from_when_fused_blocks_was_a_bool_loads():
    """Checkpoints before "auto" stored true (asked for) or false (the default)."""
    for stored, now in ((True, "on"), (False, "auto")):
        data = load_profile("paper-fourrooms").to_dict()
        data["train"]["fused_blocks"] = stored
        assert experiment_from_dict(data).train.fused_blocks == now


def test_a_config_that_names_the_removed_fused_attention_loads_unless_it_asks_for_it():
    """The GPU runs' checkpoints store "auto" or "off" (now SDPA attention, as everywhere);
    asking for the kernel is an error that says it is gone."""
    data = load_profile("paper-fourrooms").to_dict()
    for stored in ("auto", "off"):
        data["train"]["fused_attention"] = stored
        assert experiment_from_dict(data).to_dict() == load_profile("paper-fourrooms").to_dict()
    data["train"]["fused_attention"] = "on"
    with pytest.raises(ConfigError, match="train.fused_attention was removed"):
        experiment_from_dict(data)
    with pytest.raises(ConfigError, match="train.fused_attention was removed"):
        load_profile("paper-fourrooms", ["train.fused_attention='on'"])
