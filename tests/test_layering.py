"""Imports run one way: base <- data <- layers <- nets <- solvers <- (fcnwild.caffe, tools).

Every module of every package is parsed and each ``import``/``from ... import`` naming an
fcnwild package, at module level or inside a function, is checked against the order
stated in the README's layout section."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folder of this repository -> the package name it is installed as (setup.py).
FOLDERS = {"base": "base", "data": "data", "layers": "layers", "nets": "nets",
           "solvers": "solvers", "tools": "tools", "pycaffe": "caffe"}
# What each package may import (besides itself).
ALLOWED = {
    "base": set(),
    "data": {"base"},
    "layers": {"base", "data"},
    "nets": {"base", "data", "layers"},
    "solvers": {"base", "layers", "nets"},
    "caffe": {"base", "data", "layers", "nets", "solvers"},
    "tools": {"base", "data", "layers", "nets", "solvers", "caffe"},
}


def imported_packages(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, fcnwild package) of every import in ``path``; relative imports stay inside
    ``package``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((node.lineno, package))
                continue
            names = [node.module or ""]
            if node.module == "fcnwild":
                names = [f"fcnwild.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "fcnwild" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def modules() -> list[tuple[str, Path]]:
    return [(package, path) for folder, package in FOLDERS.items()
            if (ROOT / folder).is_dir()
            for path in sorted((ROOT / folder).rglob("*.py"))
            if "shim" not in path.relative_to(ROOT / folder).parts]


@pytest.mark.parametrize("package, path", modules(),
                         ids=lambda value: str(value.relative_to(ROOT)) if isinstance(value, Path)
                         else value)
def test_imports_only_point_down(package, path):
    upward = [f"{path.relative_to(ROOT)}:{line} imports fcnwild.{target}"
              for line, target in imported_packages(path, package)
              if target != package and target not in ALLOWED[package]]
    assert not upward, f"imports against the layering ({package} may import " \
                       f"{sorted(ALLOWED[package]) or 'nothing of fcnwild'}):\n" + \
                       "\n".join(upward)


def test_every_package_folder_is_checked():
    walked = {package for package, _ in modules()}
    assert {"base", "data", "layers", "nets", "solvers", "tools"} <= walked


def test_an_upward_import_inside_a_function_is_found(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import numpy\n\ndef f():\n    from fcnwild.solvers import solver\n"
                      "    import fcnwild.tools.cli\n\nfrom fcnwild import nets\n")
    assert sorted(imported_packages(module, "layers")) == [(4, "solvers"), (5, "tools"),
                                                           (7, "nets")]
