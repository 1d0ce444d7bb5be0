"""The core's shape: layer packages that import only downwards, no import circle, and nothing
in `policyfresh/` imports dagster."""

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import policyfresh
from policyfresh.layers import LAYERS

CORE = Path(policyfresh.__file__).parent
FRAMEWORK = {"dagster", "dagster_webserver", "orchestration", "assets"}
MODULES = sorted(p for p in CORE.rglob("*.py") if "vendor" not in p.parts)


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("policyfresh", include_external_packages=False)


def imported_modules(path: Path) -> list[tuple[str, bool]]:
    """(module, at module level) for every import in the file, nested ones included."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", id(node) in top))
    return found


def test_every_module_lives_in_a_layer_and_every_layer_is_a_package():
    folders = {p.relative_to(CORE).parts[0] for p in MODULES if len(p.relative_to(CORE).parts) > 1}
    assert folders == set(LAYERS)
    loose = {p.name for p in MODULES if p.parent == CORE}
    assert loose == {"__init__.py", "layers.py"}


def test_layers_import_only_downwards(graph):
    upward = graph.find_illegal_dependencies_for_layers(
        layers=[f"policyfresh.{name}" for name in reversed(LAYERS)]
    )
    assert not upward, [
        (d.importer, d.imported, [route.middle for route in d.routes]) for d in upward
    ]


def test_no_module_imports_itself_through_others(graph):
    circles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(imported=module, importer=imported):
                circles.add(tuple(sorted((module, imported))))
    assert not circles


def test_no_core_module_imports_the_framework():
    assert len(MODULES) > 40, "the walk found the modules"
    for path in MODULES:
        for module, top_level in imported_modules(path):
            if module.split(".")[0] not in FRAMEWORK:
                continue
            # The CLI's `run` and `dev` hand over to the orchestration layer, lazily; `run`
            # asks a warm run worker first (`warm_socket` imports no dagster).
            handover = {"orchestration.runner", "orchestration.warm_socket"}
            assert path.parent.name == "cli" and module in handover, (path, module)
            assert not top_level, path


def test_importing_every_core_module_leaves_dagster_unloaded():
    modules = ", ".join(
        ".".join(("policyfresh", *p.relative_to(CORE).with_suffix("").parts))
        for p in MODULES
        if p.name not in ("__init__.py", "__main__.py")
    )
    code = f"import sys, {modules}; print('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
