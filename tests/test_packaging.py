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
    for src in ("smoe_tile.h", "smoe_tile_cpu.cpp", "smoe_tile_cuda.cu", "mdbscan.cpp", "ssim_cpu.cpp"):
        assert (ROOT / "raw_kernels" / src).is_file()
        assert any(Path(src).match(pattern) for pattern in data)


def test_every_subpackage_is_listed():
    """A folder of smoe_core with an __init__.py that pyproject does not list would be missing from a wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "smoe_core").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert "smoe_core.notebooks" in listed


def test_a_regular_install_finds_its_data_and_notebooks(tmp_path):
    """Builds the wheel (what ``pip install .`` installs), unpacks it and imports it from another folder: the
    test images, published tables, notebooks and kernel sources come from inside the install, not the checkout."""
    import subprocess
    import sys
    import zipfile

    out = tmp_path / "wheel"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        import pytest

        pytest.skip(f"cannot build a wheel here (no setuptools from PyPI?): {proc.stderr[-300:]}")
    wheel = next(out.glob("smoe_core-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for need in ("smoe_core/data/peppers.png", "smoe_core/data/paper_tables/as_smoe_table3_final_quality.csv",
                 "smoe_core/notebooks/compare_initializers.ipynb", "smoe_core/render/api.py",
                 "raw_kernels/smoe_tile.h", "raw_kernels/mdbscan.cpp"):
        assert need in names, need
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import smoe_core, smoe_core.io as io, smoe_core.studies.reproduce as r, raw_kernels; "
            "img = smoe_core.load_image('peppers'); "
            "print(smoe_core.__file__, io.data_dir(), io.paper_tables_dir(), r.notebook_dir(), raw_kernels.KERNEL_DIR, "
            "img.shape, len(r.available_notebooks()), sep='|')")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("SMOE_DATA_DIR", "SMOE_NOTEBOOK_DIR")}
    env["PYTHONPATH"] = str(site)
    res = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    fields = res.stdout.strip().split("|")
    assert all(f.startswith(str(site)) for f in fields[:5]), fields
    from smoe_core.studies.reproduce import available_notebooks

    assert fields[5] == "(512, 512)" and int(fields[6]) == len(available_notebooks()) >= 4
