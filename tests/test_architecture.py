"""The core package is framework-free: nothing in `policyfresh/` imports dagster."""

import ast
import subprocess
import sys
from pathlib import Path

import policyfresh

CORE = Path(policyfresh.__file__).parent
FRAMEWORK = {"dagster", "dagster_webserver", "orchestration", "assets"}


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


def test_no_core_module_imports_the_framework():
    for path in CORE.glob("*.py"):
        for module, top_level in imported_modules(path):
            if module.split(".")[0] not in FRAMEWORK:
                continue
            # The CLI's `run` and `dev` hand over to the orchestration layer, lazily.
            assert path.name == "cli.py" and module == "orchestration.runner", (path, module)
            assert not top_level, path


def test_importing_every_core_module_leaves_dagster_unloaded():
    modules = ", ".join(f"policyfresh.{p.stem}" for p in CORE.glob("*.py") if p.stem != "__init__")
    code = f"import sys, {modules}; print('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
