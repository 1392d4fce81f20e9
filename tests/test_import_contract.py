"""The import contract of pyproject.toml: it covers every module and it catches a bad import."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
#: chasquid/daemon/ holds everything the daemon alone uses: its own modules (the wiring,
#: one layer) above its packages, in the order they may import each other.
DAEMON_WIRING = {"app", "cli", "demo", "listeners", "mainlog", "sdactivation", "snapshot"}
DAEMON_LAYERS = ["monitoring", "smtpsrv", "queue", "courier", "telemetry"]
SHARED_PACKAGES = {"confdir", "programs", "localrpc", "mailauth"}


def contracts() -> list[dict[str, Any]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    found: list[dict[str, Any]] = config["tool"]["importlinter"]["contracts"]
    return found


def test_every_module_of_chasquid_is_under_a_contract() -> None:
    root = REPO / "chasquid"
    packages = {p.name for p in root.iterdir() if (p / "__init__.py").exists()}
    basics = {f"chasquid.{p.stem}" for p in root.glob("*.py") if p.stem != "__init__"}
    # A new package is either the daemon's (under daemon/) or shared, and then listed;
    # so is a new basic module.
    assert packages == SHARED_PACKAGES | {"daemon"}
    daemon = root / "daemon"
    assert {p.stem for p in daemon.glob("*.py") if p.stem != "__init__"} == DAEMON_WIRING
    assert {p.name for p in daemon.iterdir() if (p / "__init__.py").exists()} == set(DAEMON_LAYERS)
    [layers] = [c for c in contracts() if c["type"] == "layers"]
    assert layers["containers"] == ["chasquid.daemon"]
    top, *below = layers["layers"]
    assert {m.strip() for m in top.split(":")} == DAEMON_WIRING
    assert below == DAEMON_LAYERS
    shared, tools, only_basics = [c for c in contracts() if c["type"] == "forbidden"]
    assert set(shared["source_modules"]) == basics | {f"chasquid.{p}" for p in SHARED_PACKAGES}
    assert set(only_basics["source_modules"]) == basics
    for contract in (shared, tools):
        assert contract["forbidden_modules"] == ["chasquid.daemon"]


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "repo"
    tree.mkdir()
    shutil.copy(REPO / "pyproject.toml", tree)
    skip = shutil.ignore_patterns("__pycache__")
    for package in ("chasquid", "chasquid_util", "smtp_check", "mda_lmtp"):
        shutil.copytree(REPO / package, tree / package, ignore=skip)
    return tree


def lint_with_import(tmp_path: Path, module: str, statement: str) -> str:
    """lint-imports on a copy of the tree where ``module`` also runs ``statement``: its report.

    The copy passes before the change, and must fail after it.
    """
    tree = copy_tree(tmp_path)
    assert lint_imports(tree).returncode == 0
    with (tree / (module.replace(".", "/") + ".py")).open("a") as f:
        f.write(f"\n{statement}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout
    return result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "reported"),
    [
        pytest.param(
            "chasquid_util.cli",
            "import chasquid.daemon.queue.delivery",
            "chasquid_util.cli -> chasquid.daemon.queue.delivery",
            id="a tool reaches the queue engine",
        ),
        pytest.param(
            "chasquid.daemon.courier.mda",
            "from chasquid.daemon.queue import item",
            "chasquid.daemon.courier.mda -> chasquid.daemon.queue",
            id="a courier imports the queue",
        ),
        pytest.param(
            "chasquid.daemon.smtpsrv.server",
            "from chasquid.daemon import app",
            "chasquid.daemon.smtpsrv.server -> chasquid.daemon.app",
            id="reception imports the wiring",
        ),
        pytest.param(
            "chasquid.confdir.domains",
            "from chasquid.daemon.telemetry import metrics",
            "chasquid.confdir.domains -> chasquid.daemon.telemetry",
            id="the shared library imports the daemon",
        ),
    ],
)
def test_lint_imports_fails_on_an_import_across(
    tmp_path: Path, module: str, statement: str, reported: str
) -> None:
    assert reported in lint_with_import(tmp_path, module, statement)
