"""The layers of the package hold: import-linter's contracts (pyproject.toml) pass, a
backwards import breaks them, and no private name crosses from one subpackage to another."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "src" / "modelhaul"
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(src: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contract_holds() -> None:
    done = _lint(ROOT / "src")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # the store layer reaching up into the transfer engine
        ("_store/upwards.py", "from .._transfer.engine import Engine\n", "Layers"),
        # the library loading the CLI (and with it click and rich)
        ("_repo/upwards.py", "from .._cli.main import cli\n", "never loads the CLI"),
        # the two services importing each other
        ("_server/sideways.py", "from .._mirror.sync import sync_mirror\n", "Layers"),
    ],
)
def test_a_backwards_import_breaks_the_contract(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    shutil.copytree(PKG, tmp_path / "modelhaul", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "modelhaul" / module).write_text(line)
    done = _lint(tmp_path)
    assert done.returncode != 0
    assert f"{broken}" in done.stdout and "BROKEN" in done.stdout
    assert f"modelhaul.{module[:-3].replace('/', '.')}" in done.stdout


def _subpackage(parts: tuple[str, ...]) -> str:
    return parts[0] if len(parts) > 1 else ""


def private_crossings(root: Path) -> list[str]:
    """``from ..other import _private`` (or ``import`` of a private module of another
    subpackage), for every module under ``root`` (the ``modelhaul`` folder)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("").parts
        here = _subpackage(rel)
        package = list(rel[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            base = package[: len(package) - (node.level - 1)]
            target = [*base, *(node.module.split(".") if node.module else [])]
            there = target[0] if target else ""
            if there == here or not target:
                continue
            private = [p for p in target[1:] if p.startswith("_")]
            names = [a.name for a in node.names if a.name.startswith("_")]
            if private or names:
                found.append(f"{'/'.join(rel)}.py:{node.lineno} imports {'.'.join(target)}:"
                             f" {', '.join(private + names)}")  # fmt: skip
    return found


def test_no_private_name_crosses_a_subpackage() -> None:
    assert private_crossings(PKG) == []


def test_the_crossing_check_sees_a_private_import(tmp_path: Path) -> None:
    shutil.copytree(PKG, tmp_path / "modelhaul", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "modelhaul" / "_repo" / "peek.py").write_text(
        "from .._transfer.copy import _plan\n"
    )
    assert private_crossings(tmp_path / "modelhaul") == [
        "_repo/peek.py:1 imports _transfer.copy: _plan"
    ]


def test_import_modelhaul_loads_no_cli() -> None:
    code = (
        "import sys, modelhaul; modelhaul.pull; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'click', 'rich', 'starlette'}),"
        " sorted(m for m in sys.modules if m.startswith('modelhaul._cli')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"
