"""Packaging: environment.yml (conda users) and pyproject.toml list the same dependencies."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {r.strip() for r in project["dependencies"]}
    declared |= {r.strip() for extra in project.get("optional-dependencies", {}).values() for r in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_pins = {r.strip() for r in pip_section if not r.startswith("-e")}
    # same names and the same version pins
    assert {_name(r): r.replace(" ", "") for r in conda_pins} == {_name(r): r.replace(" ", "") for r in declared}
    py = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    minimum = project["requires-python"].lstrip(">=")
    assert tuple(int(x) for x in py.split("=")[1].split(".")) >= tuple(int(x) for x in minimum.split("."))


def test_kernel_sources_ship_with_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = project["tool"]["setuptools"]["package-data"]["raw_kernels"]
    for src in ("smoe_tile.h", "smoe_tile_cpu.cpp", "smoe_tile_cuda.cu", "mdbscan.cpp"):
        assert (ROOT / "raw_kernels" / src).is_file()
        assert any(Path(src).match(pattern) for pattern in data)
