"""The layers of DESIGN "Shape" hold in the import graph.

Data flows accounts → capacity → contracts → billing; marketplace (and devtools) sit on
top; no app's modules import each other in a circle. import-linter checks the contracts
in ``pyproject.toml`` on every import statement (function-level and ``TYPE_CHECKING``
ones count), directly and through other modules, so a new upward import fails here.
A lower layer that needs a higher one's answer exposes a seam in its own selectors.py;
``apps.get_model``/``is_installed`` must not stand in for the import the rule forbids.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = (
    "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
)


def _importlinter() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_imports_follow_the_layers_and_make_no_cycle():
    result = subprocess.run(
        [sys.executable, "-c", LINT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_package_of_the_project_is_in_the_graph():
    """A new top-level package (devtools, gateway) must join ``root_packages`` and its
    layer: import-linter does not look at packages it was not told about."""
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages <= set(_importlinter()["root_packages"])


def _registry_lookups(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("get_model", "is_installed")
    ]


def test_application_code_does_not_reach_models_through_the_app_registry():
    """Migrations get historical models from ``apps.get_model``; application code
    imports what it may import and asks through a seam for what it may not."""
    found = []
    for package in _importlinter()["root_packages"]:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            found += _registry_lookups(path)
    assert found == []
