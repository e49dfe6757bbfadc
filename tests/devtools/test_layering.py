"""devtools sits on top: no product module imports it, and production does not install it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.test_project import _production_environment

ROOT = Path(__file__).resolve().parent.parent.parent
PRODUCT_PACKAGES = ("config", "marketplace", "capacity", "contracts", "billing")


def _imported_modules(path: Path) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
    return modules


def test_no_product_module_imports_devtools() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {module}"
        for package in PRODUCT_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for module in _imported_modules(path)
        if module == "devtools" or module.startswith("devtools.")
    ]
    assert offenders == []


def test_production_does_not_install_devtools() -> None:
    script = (
        "import django; django.setup(); from django.apps import apps; "
        "print(apps.is_installed('devtools'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=_production_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
