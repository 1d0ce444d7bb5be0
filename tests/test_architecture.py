"""The core package is framework-free: nothing in `ragfresh/` imports dagster."""

import ast
import subprocess
import sys
from pathlib import Path

import ragfresh

CORE = Path(ragfresh.__file__).parent


def test_no_core_module_imports_dagster_at_module_level():
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(
                n.split(".")[0] in {"dagster", "orchestration", "assets"} for n in names
            ), path


def test_importing_every_core_module_leaves_dagster_unloaded():
    modules = ", ".join(f"ragfresh.{p.stem}" for p in CORE.glob("*.py") if p.stem != "__init__")
    code = f"import sys, {modules}; print('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
