"""The architecture, enforced: what each room of the code may import (nothing imports upward).

Floors, from the bottom: `kmervae.core` (the model core; runs on a bare GPU host with torch,
numpy and pyarrow) and `data_pipeline` (the featurizer and the BAM depth reader; the feature
contract only), then
`kmervae.tracking` (MLflow), `kmervae.apply` (using a model), `kmervae.distributed` (Ray),
and on top the CLI and `sweeps/`. Every import is checked, those inside functions too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

STDLIB = set(sys.stdlib_module_names) | {"__future__"}
ROOMS = {
    # room: (kmervae rooms it may import, third-party packages it may import)
    "kmervae.core": (
        {"kmervae", "kmervae.core"},
        {"torch", "numpy", "pyarrow", "matplotlib", "yaml", "sklearn", "igraph", "faiss"},
    ),
    "data_pipeline": (
        {"kmervae", "kmervae.core.feature_contract", "kmervae.core.errors", "kmervae.core.markers", "data_pipeline"},
        {"numpy", "pyarrow", "numba", "dnaio", "xopen", "tqdm", "pysam", "pyrodigal", "pyhmmer"},
    ),
    # requests and sqlalchemy: MLflow's own clients, whose error types say a store is unreachable.
    "kmervae.tracking": (
        {"kmervae", "kmervae.core", "kmervae.tracking"},
        {"torch", "numpy", "pyarrow", "mlflow", "requests", "sqlalchemy"},
    ),
    "kmervae.apply": (
        {"kmervae", "kmervae.core", "kmervae.tracking", "kmervae.apply", "data_pipeline"},
        {"torch", "numpy", "pyarrow", "mlflow", "sklearn", "onnx", "onnxruntime", "onnxscript", "tqdm"},
    ),
    "kmervae.distributed": (
        {"kmervae", "kmervae.core", "kmervae.tracking", "kmervae.apply", "kmervae.distributed", "data_pipeline"},
        {"torch", "numpy", "pyarrow", "mlflow", "ray", "optuna", "matplotlib"},
    ),
}
OPTIONAL_LAZY = {"matplotlib", "yaml", "sklearn", "igraph", "faiss"}
"""Allowed in the core only inside functions (drawing, YAML files, k-means ARI, binning): bare hosts lack them."""


def modules_of(room: str) -> list[Path]:
    return sorted((REPO / room.replace(".", "/")).glob("*.py"))


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, id(node) in top))
    return found


def allowed(module: str, rooms: set[str]) -> bool:
    return (
        any(module == room or module.startswith(room + ".") for room in rooms if room != "kmervae")
        or module == "kmervae"
    )


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_each_room_imports_only_the_floors_below_it(room):
    own, third_party = ROOMS[room]
    problems = []
    for path in modules_of(room):
        for module, at_top in imports(path):
            root = module.split(".")[0]
            if root in STDLIB:
                continue
            if root in ("kmervae", "data_pipeline"):
                if not allowed(module, own):
                    problems.append(f"{path.relative_to(REPO)} imports {module}")
            elif root not in third_party:
                problems.append(f"{path.relative_to(REPO)} imports {module}, not allowed in {room}")
            elif room == "kmervae.core" and root in OPTIONAL_LAZY and at_top:
                problems.append(f"{path.relative_to(REPO)} imports {module} at module level (bare hosts lack it)")
    assert problems == []


def test_every_module_lives_in_a_room():
    top_level = sorted(p.name for p in (REPO / "kmervae").glob("*.py"))
    assert top_level == ["__init__.py", "cli.py"]  # the top floor; everything else is grouped by floor
    for package in (REPO / "kmervae").iterdir():
        if package.is_dir() and package.name != "__pycache__":
            assert f"kmervae.{package.name}" in ROOMS, package
            assert ast.get_docstring(ast.parse((package / "__init__.py").read_text())), (
                f"{package} says what it may import"
            )


def test_nothing_imports_a_private_name_of_another_module():
    problems = []
    for room in ROOMS:
        for path in modules_of(room):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("kmervae", "data_pipeline")):
                    problems += [
                        f"{path.name}: {node.module}.{a.name}"
                        for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")
                    ]
    assert problems == []


def test_the_core_imports_with_ray_mlflow_and_optuna_absent(tmp_path):
    """A bare GPU host has torch, numpy and pyarrow only: the core must import there."""
    import subprocess

    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('ray', 'mlflow', 'optuna', 'sklearn', 'matplotlib'):\n"
        "            raise ImportError(f'{name} is not installed on a bare host')\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    core = [f"kmervae.core.{p.stem}" for p in modules_of("kmervae.core") if p.stem != "__init__"]
    code = blocker + "".join(f"import {m}\n" for m in core) + "print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]
