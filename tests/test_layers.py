"""Imports go one way: catalog.cli, catalog.demo and catalog.serve -> ingest, analysis -> the
catalog core.

The contracts are in pyproject.toml ([tool.importlinter]); these tests run ``lint-imports``
on the tree, show that a backwards import breaks it, and keep the core contract's module
list complete.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CORE_CONTRACT = "The catalog core never imports ingest or analysis"
# The catalog modules above ingest and analysis (everything else in catalog/ is the core).
TOP_MODULES = {"catalog.cli", "catalog.demo", "catalog.serve"}


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


def test_a_backwards_import_breaks_the_core_contract(tmp_path):
    for package in ("catalog", "ingest", "analysis"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "catalog" / "db.py", "a", encoding="utf-8") as db:
        db.write("\nimport ingest.backends\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    result = lint_imports(tmp_path, env)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"{CORE_CONTRACT} BROKEN" in output
    assert "catalog.db -> ingest.backends" in output


def test_every_core_module_is_in_the_core_contract():
    modules = {f"catalog.{p.stem}" for p in (ROOT / "catalog").glob("*.py") if p.stem != "__init__"}
    modules |= {f"catalog.{p.parent.name}" for p in (ROOT / "catalog").glob("*/__init__.py")}
    core = contracts()[CORE_CONTRACT]
    assert set(core["source_modules"]) == modules - TOP_MODULES
    assert set(core["forbidden_modules"]) == {"ingest", "analysis"}


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
