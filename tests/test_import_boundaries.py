"""The import direction (docs/ARCHITECTURE.md): `shared` imports none of the others, `tui` never
the broker, the worker or the inference stack, `broker` never the worker, the dashboard or the
inference stack, and `cli` loads a daemon only inside the command that runs it.

Checked twice: what a fresh interpreter has in sys.modules after the imports (catches a
dependency pulled in through a third module), and every import statement in the source,
including the lazy ones inside functions (catches what only runs on some code path).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SHARED = ["shared", "shared.protocol", "shared.client", "shared.options", "shared.config", "shared.states",
          "shared.security", "shared.sdnotify", "shared.names", "shared.errors", "shared.uploads", "shared.results",
          "shared.pipeline"]


def loaded_after(imports: list[str]) -> set[str]:
    """Top-level names of every module a fresh interpreter holds after importing `imports`."""
    code = ("import importlib, json, sys\n"
            f"for name in {imports!r}:\n"
            "    importlib.import_module(name)\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout.splitlines()[-1]))


def modules_of(package: str) -> list[str]:
    """Every module of a package in this checkout, by its source files (never __main__)."""
    root = REPO / package
    return sorted({".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                   for f in root.rglob("*.py") if f.name != "__main__.py"})


def test_shared_loads_none_of_the_others():
    assert loaded_after(SHARED) & {"broker", "worker", "tui", "cli", "rembg", "onnxruntime", "textual"} == set()


def test_the_dashboard_loads_no_broker_worker_or_inference():
    tui = modules_of("tui")
    assert "tui.app" in tui and "tui.feed" in tui
    assert loaded_after(tui) & {"broker", "worker", "rembg", "onnxruntime", "cli"} == set()


def test_the_command_line_loads_no_daemon_until_a_command_runs_one():
    cli = modules_of("cli")
    assert {"cli.main", "cli.daemons", "cli.jobs", "cli.up"} <= set(cli)
    assert loaded_after(cli) & {"broker", "worker", "tui", "textual", "rembg", "onnxruntime"} == set()


def test_the_broker_loads_no_worker_dashboard_or_inference():
    assert loaded_after(modules_of("broker")) & {"worker", "tui", "cli", "textual", "rembg", "onnxruntime"} == set()


# ---------------------------------------------------------------- every import statement

def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) for every import in a file: statements anywhere (also inside
    functions), and importlib.import_module / __import__ calls with a literal name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


RULES = {
    "shared": {"broker", "worker", "tui", "cli", "textual"},
    "tui": {"broker", "worker", "cli", "rembg", "onnxruntime"},
    "broker": {"worker", "tui", "cli", "textual", "rembg", "onnxruntime"},
    "worker": {"broker", "tui", "cli", "textual"},
}


@pytest.mark.parametrize("package", sorted(RULES))
def test_no_import_statement_crosses_the_line(package: str):
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    crossings = [f"{f.relative_to(REPO)}:{line} imports {name}"
                 for f in files for line, name in imported_names(f) if name in RULES[package]]
    assert crossings == []


def test_the_static_check_sees_lazy_and_dynamic_imports(tmp_path: Path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n"
                      "def f():\n    from broker.server import serve\n    import tui.app as a\n"
                      "def g():\n    importlib.import_module('worker.daemon')\n    __import__('rembg')\n"
                      "from . import sibling\n")
    assert sorted(name for _, name in imported_names(sample)) == ["broker", "os", "rembg", "tui", "worker"]
