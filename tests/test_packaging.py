"""The install paths agree: environment.yml delegates to pip with pyproject's dependency set
and the same CPU torch as `make setup`, the extras that setup installs cover every optional
dependency but CUDA's, and nothing imports the optional CUDA extra at module load."""
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _make_variable(name: str) -> str:
    return re.search(rf"^{name}\s*\?=\s*(.*)$", (ROOT / "Makefile").read_text(), re.M).group(1)


def test_environment_yml_installs_the_make_setup_extras_with_the_cpu_torch():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    editable = next(line for line in pip if line.startswith("-e "))
    extras = editable.split("[", 1)[1].rstrip("]").split(",")
    assert extras == _make_variable("EXTRAS").split(",")  # conda and make install the same set
    torch_pin = next(line for line in pip if line.startswith("torch"))
    assert torch_pin == _make_variable("TORCH")
    index = f"--extra-index-url {_make_variable('TORCH_INDEX')}"
    assert pip.index(index) < pip.index(torch_pin) < pip.index(editable)


def test_make_setup_extras_cover_every_optional_dependency_but_cuda():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    installed, todo = set(), _make_variable("EXTRAS").split(",")
    while todo:  # follow self-references such as "hrm-agent[plots]"
        extra = todo.pop()
        installed.add(extra)
        for requirement in optional[extra]:
            if requirement.startswith(f"{project['name']}["):
                todo += requirement.split("[", 1)[1].rstrip("]").split(",")
    assert installed == set(optional) - {"cuda"}


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs a git checkout")
def test_gitignore_ignores_no_tracked_file():
    tracked_but_ignored = subprocess.run(
        ["git", "ls-files", "--cached", "--ignored", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout
    assert tracked_but_ignored == ""


def test_package_imports_without_flash_attn():
    code = ("import sys; sys.modules['flash_attn'] = None; "
            "import hrm_agent.models, hrm_agent.trainer, hrm_agent.analysis, hrm_agent.widgets")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
