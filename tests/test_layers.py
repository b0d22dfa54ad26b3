"""Imports go one way: catalog.cli, catalog.demo and catalog.serve -> ingest, analysis -> the
catalog core. The toy lab (catalog.toylab) stands on the core beside them; no engine imports it.

The contracts are in pyproject.toml ([tool.importlinter]); these tests run ``lint-imports``
on the tree, show that a backwards import or an import circle (two modules that import each
other, also for type checking only) breaks it, and keep the core contract's module list
complete.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CORE_CONTRACT = "The catalog core never imports ingest, analysis or the toy lab"
ACYCLIC_CONTRACT = "No import circles: the modules of each package import one way"
# The catalog modules that are not the core (everything else in catalog/ is): the three above
# ingest and analysis, and the toy lab (demo and test machinery on top of the core).
NOT_CORE = {"catalog.cli", "catalog.demo", "catalog.serve", "catalog.toylab"}


def lint_imports(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return {c["name"]: c for c in config["tool"]["importlinter"]["contracts"]}


def test_import_contracts_are_kept():
    result = lint_imports(ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "0 broken" in output
    for name in contracts():
        assert f"{name} KEPT" in output


def lint_imports_with(tmp_path: Path, module: str, line: str) -> subprocess.CompletedProcess:
    """``lint-imports`` on a copy of the tree with ``line`` added to ``module`` (a path)."""
    for package in ("catalog", "ingest", "analysis"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / module, "a", encoding="utf-8") as source:
        source.write(f"\n{line}\n")
    return lint_imports(tmp_path, {**os.environ, "PYTHONPATH": str(tmp_path)})


def test_a_backwards_import_breaks_the_core_contract(tmp_path):
    result = lint_imports_with(tmp_path, "catalog/db.py", "import ingest.backends")

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"{CORE_CONTRACT} BROKEN" in output
    assert "catalog.db -> ingest.backends" in output


@pytest.mark.parametrize(("module", "line", "circle"), [
    ("catalog/schema.py", "import catalog.limits", ".schema -> .limits"),  # limits reads schema
    # Imported for type checking only, as analysis/results.py did from sweeps.py.
    ("analysis/values.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
     "    from analysis.results import CrystallizationResult", ".values -> .results"),
])
def test_an_import_circle_breaks_the_acyclic_contract(tmp_path, module, line, circle):
    result = lint_imports_with(tmp_path, module, line)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"{ACYCLIC_CONTRACT} BROKEN" in output
    assert circle in output  # the import that closes the circle is named


def test_every_core_module_is_in_the_core_contract():
    modules = {f"catalog.{p.stem}" for p in (ROOT / "catalog").glob("*.py") if p.stem != "__init__"}
    modules |= {f"catalog.{p.parent.name}" for p in (ROOT / "catalog").glob("*/__init__.py")}
    core = contracts()[CORE_CONTRACT]
    assert set(core["source_modules"]) == modules - NOT_CORE
    assert set(core["forbidden_modules"]) == {"ingest", "analysis", "catalog.toylab"}


def test_catalog_help_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from catalog.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted({'torch', 'transformers', 'matplotlib'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_no_module_of_the_three_packages_is_over_800_lines():
    """A module that long does more than one job: split it by job (docs/architecture.md)."""
    long = {str(path.relative_to(ROOT)): n for package in ("catalog", "ingest", "analysis")
            for path in (ROOT / package).rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 800}
    assert not long, long
