"""The house by stage (docs/architecture.md, "Packages"): the import-linter contracts in
pyproject.toml hold, and they would catch a break.

* **stages**: each package imports only from the packages below it
  (cli > tools > interchange > train > runtime > compile > lang > data | layers > core);
* **no cycles**: no two packages, and no two modules of one package, import each other.

import-linter (on grimp) reads the imports, lazy ones inside functions included. The planted
tests copy the package, add one bad import, and check that the same contracts then fail: a
layering test that cannot fail would prove nothing.
"""
from __future__ import annotations

import ast
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _lint(root: pathlib.Path) -> subprocess.CompletedProcess:
    """lint-imports on the netdsl package under ``root`` with root's pyproject.toml, no cache
    (it would be written into the working tree)."""
    code = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([sys.executable, "-c", code, "--no-cache", "--no-logo"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_stage_contracts_hold():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout, r.stdout


def _copy_with(tmp_path, module: str, line: str) -> pathlib.Path:
    """A copy of the package and pyproject.toml with ``line`` appended to ``module``."""
    shutil.copytree(ROOT / "netdsl", tmp_path / "netdsl",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "netdsl" / module
    path.write_text(path.read_text() + f"\n{line}\n")
    return tmp_path


@pytest.mark.parametrize("module,line,broken", [
    # the graph records reaching up into the runtime: an upward import
    ("core/graph.py", "from ..runtime import plan  # planted", "netdsl.core is not allowed"),
    # the naive references importing the conv that imports them: a cycle inside layers/
    ("layers/naive.py", "from . import conv  # planted", "No cycles are allowed in netdsl.layers"),
])
def test_a_planted_bad_import_breaks_the_contracts(tmp_path, module, line, broken):
    r = _lint(_copy_with(tmp_path, module, line))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "BROKEN" in r.stdout and broken in r.stdout, r.stdout


def _private_imports(root: pathlib.Path):
    """(file:line, name) for every private name a netdsl module imports from another module,
    or reads off another netdsl module it imported (``mod._name``)."""
    def private(name):
        return name.startswith("_") and not name.startswith("__")
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or
                                                     (node.module or "").startswith("netdsl")):
                for alias in node.names:
                    if private(alias.name):
                        yield f"{path.relative_to(root.parent)}:{node.lineno}", alias.name
                    modules.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and private(node.attr)
                    and isinstance(node.value, ast.Name) and node.value.id in modules):
                yield f"{path.relative_to(root.parent)}:{node.lineno}", node.attr


def test_no_private_name_crosses_a_module_boundary():
    """What another module needs is public (and documented) or lives where it is used."""
    assert list(_private_imports(ROOT / "netdsl")) == []


def test_the_private_name_check_sees_a_planted_one(tmp_path):
    pkg = tmp_path / "netdsl"
    pkg.mkdir()
    (pkg / "a.py").write_text("def _helper():\n    return 1\n")
    # (the import spans two lines so that the one-line git grep stays clean here)
    lines = ["from .a import (",
             "    _helper)",
             "from . import a",
             "x = a._helper()"]
    (pkg / "b.py").write_text("\n".join(lines) + "\n")
    assert [name for _, name in _private_imports(pkg)] == ["_helper", "_helper"]
