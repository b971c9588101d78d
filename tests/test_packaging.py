"""The install paths agree: environment.yml delegates to pip with pyproject's dependency set,
and nothing imports the optional CUDA extra at module load."""
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_installs_the_pyproject_extras_with_the_cpu_torch_pin():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    makefile = (ROOT / "Makefile").read_text()
    editable = next(line for line in pip if line.startswith("-e "))
    extras = editable.split("[", 1)[1].rstrip("]").split(",")
    assert set(extras) <= set(project["optional-dependencies"]) - {"cuda"}
    assert f"EXTRAS ?= {','.join(extras)}" in makefile  # conda and make install the same set
    torch_pin = next(line for line in pip if line.startswith("torch"))
    assert f"TORCH  ?= {torch_pin}" in makefile
    assert pip.index(torch_pin) < pip.index(editable)  # the CPU pin comes first


def test_package_imports_without_flash_attn():
    code = ("import sys; sys.modules['flash_attn'] = None; "
            "import hrm_agent.models, hrm_agent.trainer, hrm_agent.analysis, hrm_agent.widgets")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
