"""Notebook parameters: a bad one stops the notebook in the first cell that uses it, with a
message that names the problem (the outputs themselves are checked by nbval)."""
from pathlib import Path

import papermill
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str, tmp_path: Path, **parameters) -> str:
    """Execute notebook `name` with `parameters`; return the error papermill reports."""
    with pytest.raises(papermill.PapermillExecutionError) as error:
        papermill.execute_notebook(NOTEBOOKS / f"{name}.ipynb", tmp_path / f"{name}.ipynb",
                                   parameters=parameters, cwd=str(NOTEBOOKS), kernel_name="python3",
                                   progress_bar=False)
    return str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("name, parameters, message", [
    ("02_training", {"envs": ["mars"]}, "unknown env 'mars'; choose one of fourrooms, maze"),
    ("02_training", {"hrm_conditions": ["carry"]}, "unknown condition(s) ['carry']"),
    ("03_evaluation", {"checkpoint": "missing.pt"}, "checkpoint missing.pt does not exist"),
    ("03_evaluation", {"pretrained_dir": "nowhere"}, "no fourrooms agents in 'nowhere'"),
    ("05_convergence", {"envs": ["mars"]}, "no mars agents in"),
    ("04_play", {"env": "mars"}, "unknown env 'mars'; choose one of fourrooms, maze"),
    ("04_play", {"checkpoint": "missing.pt"}, "checkpoint 'missing.pt' does not exist"),
    ("01_environments", {"episodes": 0}, "episodes must be >= 1, got 0"),
])
def test_bad_parameter_stops_the_notebook_with_a_clear_message(tmp_path, name, parameters, message):
    assert message in run_notebook(name, tmp_path, figures_dir=str(tmp_path), **parameters)
