"""The import graph tells the truth: no cycles, library imports at the top, the model zoo light.

The graph is read from the source with :mod:`ast` (every ``import``/``from ... import`` of a medseg module, wherever
it stands), so a function-local import cannot hide an edge.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import medseg

PACKAGE_DIR = Path(medseg.__file__).resolve().parent
#: The command-line edge: these may import lazily (start-up time of ``medseg --help``).
CLI_EDGE = ("medseg.cli", "medseg.__main__", "medseg.commands")


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the medseg package (packages by their __init__)."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = ("medseg",) + path.relative_to(PACKAGE_DIR).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(node: ast.AST, module: str, known: set[str]) -> list[str]:
    """The medseg modules an import statement loads: ``from medseg.a import b`` is ``medseg.a.b`` when that is a
    module, else ``medseg.a``; relative imports are resolved against ``module``'s package."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    base = node.module or ""
    if node.level:
        package = module.split(".") if module in PACKAGES else module.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    found = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
    if len(found) < len(node.names) and base in known:
        found.append(base)
    return found


PACKAGES = {name for name, path in module_files().items() if path.name == "__init__.py"}


def import_statements(module: str, path: Path):
    """``(statement, imported module, at top level)`` for every medseg import in the file."""
    known = set(module_files())
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in imported_modules(node, module, known):
                yield node, target, id(node) in top_level


def ancestors(module: str) -> set[str]:
    """The packages above ``module``: ``medseg.a.b`` -> ``{"medseg", "medseg.a"}``."""
    parts = module.split(".")
    return {".".join(parts[:n]) for n in range(1, len(parts))}


def import_graph() -> dict[str, set[str]]:
    """Module -> the medseg modules it imports (anywhere in the file).

    Importing ``medseg.p.m`` first runs the package ``medseg.p``'s ``__init__``, so the edge goes to that package too,
    unless it is a package above the importer itself (a submodule importing its own package's re-exports: Python
    has started that package already, the one kind of cycle this graph leaves out)."""
    graph = {}
    for module, path in module_files().items():
        targets = set()
        for _, target, _ in import_statements(module, path):
            targets |= {target} | (ancestors(target) - ancestors(module))
        graph[module] = targets - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> "list[str] | None":
    """One cycle of ``graph`` as a list of modules (first == last), or None when the graph is acyclic."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> "list[str] | None":
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_the_graph_reader_sees_what_it_should():
    """The reader finds the edges this package is known to have (checked so that an empty graph cannot pass)."""
    graph = import_graph()
    assert "medseg.models.wrappers" in graph["medseg.models.checkpoint"]
    assert "medseg.preprocessing" in graph["medseg.engine.inference"]
    assert "medseg.models.registry" in graph["medseg.models"]
    assert "medseg.prediction" in graph["medseg.pipeline"]  # the package of medseg.prediction.run, via its __init__
    assert "medseg.models" not in graph["medseg.models.checkpoint"]  # its own package
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_medseg_modules():
    """No cycle, counting the package ``__init__`` that importing a submodule runs (``engine.inference`` importing
    ``medseg.prediction.outputs`` would run ``medseg.prediction``'s ``__init__``, which imports ``engine.inference``)."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_library_modules_import_medseg_modules_at_the_top():
    """Only the command-line edge imports medseg modules inside functions (for its start-up time)."""
    local = [f"{path.relative_to(PACKAGE_DIR.parent)}:{node.lineno} imports {target}"
             for module, path in module_files().items() if not module.startswith(CLI_EDGE)
             for node, target, top in import_statements(module, path) if not top]
    assert local == []


PROBE = """
import sys
import medseg.models
import medseg.models.checkpoint
medseg.models.list_models()  # every architecture module, and the pretrained loaders they register
print(sorted(m for m in sys.modules if m.startswith(("medseg.data", "medseg.engine"))))
"""


def test_the_model_zoo_imports_no_data_or_engine_module():
    """Building or reading a model needs neither the data pipeline (with its MONAI transform chain) nor the
    training engine."""
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.stdout.splitlines()[-1] == "[]"


PARTIAL_PROBE = """
import sys
from medseg.models import create, list_models
create("TransUNet-Tiny", num_classes=3, img_size=32)
print(sorted(m for m in sys.modules if m in ("medseg.models.ds_transunet", "monai")))
print(sorted({spec.family for spec in list_models()}))
"""


def test_building_a_model_imports_architectures_only_until_its_name_registers():
    """A TransUNet imports no MONAI-based architecture; listing the zoo afterwards still sees every family."""
    result = subprocess.run([sys.executable, "-c", PARTIAL_PROBE], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    loaded, families = result.stdout.splitlines()[-2:]
    assert loaded == "[]"
    assert families == str(["bisenet", "ds_transunet", "segformer", "setr", "topformer", "transunet", "unet"])
