"""The layers of docs/architecture.md hold: `lint-imports` keeps the contracts of pyproject.toml,
an upward import breaks them, and no `from ctsft` hides inside a function without saying why."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "ctsft"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.is_file(), reason="import-linter not installed")


def lint_imports(src: Path = REPO / "src") -> subprocess.CompletedProcess[str]:
    """`lint-imports` with the repository's contracts on the `ctsft` package found in `src`."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_import_contracts_are_kept() -> None:
    proc = lint_imports()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 4 kept, 0 broken." in proc.stdout


@pytest.mark.parametrize(
    ("module", "upward"),
    [
        ("facts.py", "import ctsft.errors"),  # the leaf imports nothing of ctsft
        ("artifacts.py", "from ctsft.cdt.scores import scores_table"),  # a foundation reaches up
        ("cdt/baseline.py", "from ctsft.train.methods import TrainablePlan"),  # into a sibling
        ("report/stats.py", "import torch"),  # the report stays torch-free
        ("workflow_config.py", "from ctsft.train.methods import KINDS"),  # config -> library
        ("adapters/bert.py", "from ctsft.models.task_model import TaskModel"),  # one layer up
    ],
)
def test_an_upward_import_breaks_a_contract(tmp_path: Path, module: str, upward: str) -> None:
    copy = tmp_path / "ctsft"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / module
    path.write_text(path.read_text() + f"\n{upward}  # noqa\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "BROKEN" in proc.stdout and upward.split()[1] in proc.stdout


def _function_imports(tree: ast.Module) -> list[ast.stmt]:
    """`import ctsft...` / `from ctsft... import` statements inside a function body."""
    found = []
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(func):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                if any(n == "ctsft" or n.startswith("ctsft.") for n in names):
                    found.append(node)
    return found


def _has_reason(lines: list[str], i: int) -> bool:
    """A comment on line `i` (0-based), or on the line above the group of imports it is in."""
    if "#" in lines[i]:
        return True
    while i > 0 and lines[i - 1].strip().startswith(("from ", "import ")):
        i -= 1
    return i > 0 and lines[i - 1].strip().startswith("#")


def test_no_function_level_ctsft_import_without_a_reason() -> None:
    """A `from ctsft` inside a function hides an arrow from readers and from lint-imports' view
    of the layers: allowed only to defer an optional heavy dependency, with a comment saying so."""
    silent = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for node in _function_imports(ast.parse(text)):
            if not _has_reason(lines, node.lineno - 1):
                silent.append(f"{path.relative_to(SRC)}:{node.lineno}: {lines[node.lineno - 1]}")
    assert silent == []


def test_the_leaf_facts_agree_with_the_code_behind_them() -> None:
    from ctsft.adapters import ADAPTERS
    from ctsft.config_schema import METHOD_SCHEMAS
    from ctsft.facts import METHOD_KINDS, MODEL_TYPES
    from ctsft.train.methods import KINDS

    assert sorted(ADAPTERS) == sorted(t for types in MODEL_TYPES.values() for t in types)
    assert set(METHOD_SCHEMAS) <= set(KINDS) and set(METHOD_SCHEMAS) <= set(METHOD_KINDS)
    assert all(KINDS[name].facts is METHOD_KINDS[name] for name in KINDS)


def test_the_architecture_picture_is_the_layers_contract() -> None:
    """docs/architecture.md draws the layers of the contract, top to bottom, with the same
    separators (`|` independent, `:` not), so the picture cannot drift from what is checked."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in contract["contracts"] if c["type"] == "layers")["layers"]
    doc = (REPO / "docs" / "architecture.md").read_text()
    picture = doc.split("```\n", 2)[1]
    at = 0
    for layer in layers:
        names = [n.strip() for n in layer.replace(":", "|").split("|")]
        drawn = [n.removeprefix("ctsft.") + ("/" if (SRC / n[6:]).is_dir() else "") for n in names]
        sep = " : " if ":" in layer else " | "
        found = picture.find(sep.join(drawn), at)
        assert found >= at, f"{layer!r} is not drawn below the layer above it"
        at = found
