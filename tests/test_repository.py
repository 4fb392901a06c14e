"""The repository's promises to a new user: the two Quickstart commands, CI, pins, example data."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import EXAMPLES, REPO


def quickstart_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [c.strip() for c in re.findall(r"```bash\n(.+?)\n\s*```", section, flags=re.S)]


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_second():
    commands = quickstart_commands()
    assert len(commands) == 2
    assert all("\n" not in c and c.startswith("python3 -m venv .venv && ") for c in commands)
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci_lines, "the CI script must run the README's test command verbatim"
    assert "kmervae featurize examples/" in commands[0] and "sweeps/binning_sweep.py --smoke-test" in commands[0]


def test_constraints_pin_the_tested_stack_within_the_declared_ranges():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = Version(version)
    assert pins["ray"] == Version("2.60.0") and pins["optuna"] == Version("5.0.0")
    assert pins["torch"] == Version("2.13.0") and pins["mlflow"].release[:2] == (3, 17)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"] + project["optional-dependencies"]["markers"]:
        requirement = Requirement(spec)
        assert requirement.name.lower() in pins, f"{requirement.name} is not pinned in constraints.txt"
        assert pins[requirement.name.lower()] in requirement.specifier, f"{requirement} excludes the pinned version"


def test_every_example_genome_is_attributed():
    readme = (EXAMPLES / "README.md").read_text()
    genomes = sorted(p.name for p in EXAMPLES.glob("*.fna.gz"))
    assert genomes and sum(p.stat().st_size for p in EXAMPLES.glob("*.fna.gz")) < 5 * 2**20
    for name in genomes:
        assert f"`{name}`" in readme, f"{name} has no attribution in examples/README.md"


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_lint_and_format_are_clean(command):
    """ruff (configured in pyproject.toml) finds nothing: the 120-character limit and the house style hold."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, str(REPO)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
