"""Without the torch extra's packages, importing the parts that need them raises
MissingExtra (an ImportError too) with the command that installs them. Each case runs in a
child process in which the package cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# ``sys.modules[name] = None`` makes ``import name`` fail as if it were not installed.
CHILD = """
import json, sys
for name in sys.argv[2:]:
    sys.modules[name] = None
import modelhaul
try:
    exec(sys.argv[1])
except BaseException as exc:
    print(json.dumps({
        "type": type(exc).__name__,
        "missing_extra": isinstance(exc, modelhaul.MissingExtra),
        "import_error": isinstance(exc, ImportError),
        "package": getattr(exc, "package", None),
        "message": str(exc),
    }))
else:
    print(json.dumps(None))
"""


def run_without(statement: str, *blocked: str) -> dict[str, object] | None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, statement, *blocked],
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] | None = json.loads(done.stdout)
    return result


@pytest.mark.parametrize(
    ("statement", "blocked", "package", "what"),
    [
        ("import modelhaul.torch", ("torch",), "torch", "modelhaul.torch needs"),
        (
            "from modelhaul.torch import ModelhaulCheckpointIO",
            ("pytorch_lightning",),
            "pytorch-lightning",
            "ModelhaulCheckpointIO needs",
        ),
        (
            "from modelhaul.torch import ModelhaulCheckpointIO",
            ("fsspec",),
            "fsspec",
            "Lightning plugin needs",
        ),
    ],
)
def test_a_missing_package_says_how_to_install_it(
    statement: str, blocked: tuple[str, ...], package: str, what: str
) -> None:
    pytest.importorskip(package.replace("-", "_"))  # the child blocks what is installed
    got = run_without(statement, *blocked)
    assert got is not None, f"{statement!r} worked without {package}"
    assert got["type"] == "MissingExtra", got
    assert got["missing_extra"] and got["import_error"], got
    assert got["package"] == package
    message = str(got["message"])
    assert what in message and f"the {package} package, which is not installed" in message
    assert "pip install 'modelhaul[torch]'" in message


def test_the_rest_of_modelhaul_needs_no_torch() -> None:
    assert run_without("import modelhaul; modelhaul.TransferConfig()", "torch") is None
