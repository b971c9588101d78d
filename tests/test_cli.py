"""Bad command lines end with exit code 2 and a one-line error that names the problem."""
import json

import pytest
import torch

from hrm_agent.cli import main
from hrm_agent.trainer import CHECKPOINT, METRICS, Trainer
from tests.conftest import tiny_config


def _fails(capsys, *argv: str) -> str:
    """Run the CLI, expect exit code 2, return the error line (the last line of stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny Carry Z run (paper-fourrooms with the TINY overrides), 2 steps."""
    out = tmp_path_factory.mktemp("run")
    Trainer(tiny_config("train.total_steps=2"), out).train(progress=False)
    return out


def test_help_names_the_installed_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert capsys.readouterr().out.startswith("usage: hrm-agent ")


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--checkpoint", "x.pt", "--episodes", "0"], "argument --episodes: must be >= 1, got 0"),
    (["evaluate", "--checkpoint", "x.pt", "--episodes", "-5"], "argument --episodes: must be >= 1, got -5"),
    (["evaluate", "--checkpoint", "x.pt", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["evaluate", "--checkpoint", "x.pt", "--seed", str(2**64)], "argument --seed: must be <= "),
    (["envstats", "--env", "maze", "--episodes", "0"], "argument --episodes: must be >= 1, got 0"),
    (["envstats", "--env", "maze", "--num-envs", "0"], "argument --num-envs: must be >= 1, got 0"),
    (["envstats", "--env", "maze", "--episodes", "ten"], "argument --episodes: expected an integer, got 'ten'"),
    (["render", "--seed", "-3"], "argument --seed: must be >= 0, got -3"),
    (["envstats", "--env", "maze", "--device", "gpu0"], "argument --device: 'gpu0' is not a torch device"),
    pytest.param(["evaluate", "--checkpoint", "x.pt", "--device", "cuda"],
                 "argument --device: cuda, but no CUDA device is available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")),
])
def test_out_of_range_numbers_are_refused(capsys, argv, message):
    assert message in _fails(capsys, *argv)


def test_bad_checkpoint_paths_are_named(capsys, tmp_path, run_dir):
    empty = tmp_path / "empty.pt"
    empty.touch()
    assert f"checkpoint {empty} is empty (0 bytes)" in _fails(
        capsys, "evaluate", "--checkpoint", str(empty))
    assert f"checkpoint {run_dir} is a directory; give the file" in _fails(
        capsys, "evaluate", "--checkpoint", str(run_dir))
    assert f"{run_dir} is a directory; give a file name" in _fails(
        capsys, "export", "--checkpoint", str(run_dir / CHECKPOINT), "--out", str(run_dir))


def test_an_output_directory_that_is_a_file_is_refused(capsys, tmp_path):
    file = tmp_path / "taken"
    file.write_text("")
    assert f"argument --out: {file} is an existing file, not a directory" in _fails(
        capsys, "train", "--out", str(file))
    assert f"argument --out: {file} is an existing file" in _fails(capsys, "render", "--out", str(file))


def test_json_output_is_strict_json_with_null_for_nan(capsys, tmp_path):
    # one step per episode: the untrained agent reaches no goal, so the optimality ratio is NaN
    Trainer(tiny_config("env.max_steps=1"), tmp_path).save()
    main(["evaluate", "--checkpoint", str(tmp_path / CHECKPOINT), "--episodes", "8", "--json"])
    out = capsys.readouterr().out

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    result = json.loads(out, parse_constant=no_constants)
    assert result["episodes"] == 8 and result["success_rate"] == 0.0
    assert result["mean_optimality_ratio"] is None


def test_resume_takes_the_config_from_the_checkpoint(capsys, tmp_path):
    # trained with a non-default profile, Reset Z and an override: none of it need be repeated,
    # and a flag that agrees with the checkpoint (--reset-z) is accepted
    Trainer(tiny_config("train.total_steps=2", "train.carry_z=false", "train.lr=5e-4"),
            tmp_path).train(progress=False)
    main(["train", "--out", str(tmp_path), "--resume", "--no-progress", "--json", "--reset-z",
          "--set", "train.total_steps=4", "--set", "model.attn_backend='math'"])
    assert json.loads(capsys.readouterr().out)["step"] == 4
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["carry_z"] is False and config["train"]["lr"] == 5e-4
    assert config["model"]["attn_backend"] == "math"


@pytest.mark.parametrize("argv, message", [
    (["--overwrite"], "--resume continues the run in --out and --overwrite deletes it"),
    (["--set", "train.lr=1e-3"], "--set 'train.lr=1e-3': a resumed run keeps the config in its "
                                 "checkpoint; only train.total_steps, "),
    (["--reset-z"], "--reset-z contradicts the run in {out} (checkpoint != given: "
                    "train.carry_z: True != False)"),
    (["--profile", "paper-maze"], "--profile paper-maze contradicts the run in {out} "
                                  "(checkpoint != given: "),
    (["--profile", "paper-maze"], "env.name: 'fourrooms' != 'maze'"),
])
def test_resume_refuses_flags_that_would_change_the_run(capsys, run_dir, argv, message):
    error = _fails(capsys, "train", "--out", str(run_dir), "--resume", *argv)
    assert message.format(out=run_dir) in error


def test_a_corrupt_metrics_line_is_named_on_resume(capsys, tmp_path):
    Trainer(tiny_config("train.total_steps=2"), tmp_path).train(progress=False)
    metrics = tmp_path / METRICS
    metrics.write_text("not json\n" + metrics.read_text())
    assert f"{metrics}, line 1: not a JSON record" in _fails(
        capsys, "train", "--out", str(tmp_path), "--resume")


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(capsys, tmp_path, monkeypatch, run_dir):
    import os

    out = tmp_path / "agent.pt"
    main(["export", "--checkpoint", str(run_dir / CHECKPOINT), "--out", str(out)])
    before = out.read_bytes()

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    err = _fails(capsys, "export", "--checkpoint", str(run_dir / CHECKPOINT), "--out", str(out))
    assert "No space left on device" in err
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["agent.pt"]
