"""The architecture, enforced: what each room of the code may import (nothing imports upward),
and a module graph without cycles.

Floors, from the bottom, following the user's path: `kmervae.base` (errors, the feature
contract and reader, storage, metric names), `kmervae.abundance` (reads to depths),
`kmervae.features` (sequences to features, joining the depths on), `kmervae.binning`
(clustering, marker genes, quality), `kmervae.core` (the model and its training; runs on a
bare GPU host with torch, numpy and pyarrow), `kmervae.tracking` (MLflow), `kmervae.apply`
(using a model), `kmervae.distributed` (Ray), and on top the CLI and `sweeps/`. Every import
is checked, those inside functions too.
"""

from __future__ import annotations

import ast
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

from tests.conftest import REPO

STDLIB = set(sys.stdlib_module_names) | {"__future__"}
ROOMS = {
    # room: (kmervae rooms it may import, third-party packages it may import)
    "kmervae.base": ({"kmervae", "kmervae.base"}, {"numpy", "pyarrow", "torch"}),
    "kmervae.abundance": (
        {"kmervae", "kmervae.base", "kmervae.abundance"},
        {"numpy", "pyarrow", "numba", "pysam", "xopen", "tqdm"},
    ),
    "kmervae.features": (
        {"kmervae", "kmervae.base", "kmervae.abundance", "kmervae.features"},
        {"numpy", "pyarrow", "numba", "dnaio", "xopen", "tqdm"},
    ),
    "kmervae.binning": (
        {"kmervae", "kmervae.base", "kmervae.features", "kmervae.binning"},
        {"numpy", "pyarrow", "torch", "sklearn", "igraph", "faiss", "pyrodigal", "pyhmmer"},
    ),
    "kmervae.core": (
        {"kmervae", "kmervae.base", "kmervae.binning", "kmervae.core"},
        {"torch", "numpy", "pyarrow", "matplotlib", "yaml", "sklearn"},
    ),
    # requests and sqlalchemy: MLflow's own clients, whose error types say a store is unreachable.
    "kmervae.tracking": (
        {"kmervae", "kmervae.base", "kmervae.core", "kmervae.tracking"},
        {"torch", "numpy", "pyarrow", "mlflow", "requests", "sqlalchemy"},
    ),
    "kmervae.apply": (
        {"kmervae", "kmervae.base", "kmervae.features", "kmervae.binning", "kmervae.core", "kmervae.tracking"}
        | {"kmervae.apply"},
        {"torch", "numpy", "pyarrow", "mlflow", "sklearn", "onnx", "onnxruntime", "onnxscript", "tqdm"},
    ),
    "kmervae.distributed": (
        {"kmervae", "kmervae.base", "kmervae.features", "kmervae.abundance", "kmervae.binning", "kmervae.core"}
        | {"kmervae.tracking", "kmervae.apply", "kmervae.distributed"},
        {"torch", "numpy", "pyarrow", "mlflow", "ray", "optuna", "matplotlib"},
    ),
}
OPTIONAL_LAZY = {"matplotlib", "yaml", "sklearn", "igraph", "faiss", "torch", "pyrodigal", "pyhmmer"}
"""Allowed below `kmervae.tracking` only inside functions (drawing, YAML files, binning, marker
genes; torch in the floors the featurizer and the depth scan stand on): bare hosts lack them."""
LAZY_ONLY_IN = {"torch": {"kmervae.base", "kmervae.binning"}}
"""Packages lazy only in some rooms: torch is the core's own, at module level there."""


LOWER_FLOORS = {"kmervae.base", "kmervae.abundance", "kmervae.features", "kmervae.binning", "kmervae.core"}


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
            if root == "kmervae":
                if not allowed(module, own):
                    problems.append(f"{path.relative_to(REPO)} imports {module}")
            elif root not in third_party:
                problems.append(f"{path.relative_to(REPO)} imports {module}, not allowed in {room}")
            elif at_top and root in OPTIONAL_LAZY and room in LAZY_ONLY_IN.get(root, LOWER_FLOORS):
                problems.append(f"{path.relative_to(REPO)} imports {module} at module level (bare hosts lack it)")
    assert problems == []


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def module_graph() -> dict[str, set[str]]:
    """Every kmervae module -> the kmervae modules it imports (at any depth of a function)."""
    paths = sorted((REPO / "kmervae").rglob("*.py"))
    names = {module_name(p) for p in paths}
    graph = {}
    for path in paths:
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from kmervae.binning import bins` imports the module kmervae.binning.bins
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            else:
                continue
            edges |= {t for t in targets if t in names and t != "kmervae" and not t.endswith("__init__")}
        graph[module_name(path)] = edges - {module_name(path)}
    return graph


def test_the_module_graph_has_no_cycle():
    """No exemptions: a module that needs one above it means a concept is in the wrong home."""
    try:
        order = list(TopologicalSorter(module_graph()).static_order())
    except CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")
    assert "kmervae.cli" in order and "kmervae.base.errors" in order


def test_a_cycle_is_seen():
    """The check above is not vacuous: a graph with a loop through three modules fails it."""
    with pytest.raises(CycleError):
        list(TopologicalSorter({"a": {"b"}, "b": {"c"}, "c": {"a"}}).static_order())
    graph = module_graph()
    assert "kmervae.binning.bins" in graph["kmervae.binning.recluster"]  # `from pkg import module` counts


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
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kmervae"):
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
    core = [
        f"{room}.{p.stem}"
        for room in ("kmervae.base", "kmervae.binning", "kmervae.core")
        for p in modules_of(room)
        if p.stem != "__init__"
    ]
    code = blocker + "".join(f"import {m}\n" for m in core) + "print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]
