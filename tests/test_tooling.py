"""The package stays clean under the linters people expect (ruff) and type-checks (mypy)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("ruff", ["check", "webhook_app", "sandbox", "tests", "bench"]),
        ("ruff", ["format", "--check", "webhook_app", "sandbox", "tests", "bench"]),
        # strict ([tool.mypy]); no cache: one left by `mypy webhook_app` alone resolves the sandbox differently
        ("mypy", ["--cache-dir=/dev/null", "webhook_app", "sandbox/commercelayer_sandbox"]),
        # the layers and forbidden imports of [tool.importlinter] in pyproject.toml
        ("lint-imports", ["--no-cache"]),
    ],
)
def test_tool_is_clean(tool, args):
    exe = shutil.which(tool, path=str(Path(sys.executable).parent)) or shutil.which(tool)
    if exe is None:
        pytest.fail(f"{tool} is in the test extra; install it with pip install '.[test]'")
    r = subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


MAX_CLASS_LINES = 250  # CONTRIBUTING.md, *The style*: a class a reader can hold in mind


def test_no_class_in_the_service_is_over_the_size_limit():
    """Complexity per function is ruff's (C90, max 12); the size of a class is this test's."""
    import ast

    sizes = {}
    for path in sorted((ROOT / "webhook_app").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                sizes[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = node.end_lineno - node.lineno + 1
    assert len(sizes) > 100  # the walk found the package's classes
    assert {where: n for where, n in sizes.items() if n > MAX_CLASS_LINES} == {}


def test_mypy_is_strict_without_blanket_ignores():
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert mypy.get("strict") is True
    assert "ignore-without-code" in mypy.get("enable_error_code", [])
    # missing imports are let through only for the untyped libraries listed, never everywhere
    assert "ignore_missing_imports" not in mypy
    for override in mypy.get("overrides", []):
        assert "ignore_errors" not in override, override
        assert all(not m.startswith("webhook_app") for m in override["module"]), override


def test_child_processes_report_coverage():
    """[tool.coverage.run] patch = subprocess: a `python -m webhook_app` the suite starts measures
    itself (branches too) and leaves a data file, combined with the others when the run ends."""
    import coverage

    cov = coverage.Coverage.current()
    if cov is None:
        pytest.skip("coverage is off in this run (--no-cov, or pytest-cov is not installed)")
    data_file = Path(cov.config.data_file)
    child = subprocess.Popen(
        [sys.executable, "-m", "webhook_app", "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0 and out.startswith("webhook-app "), err
    assert err == ""  # coverage in the child says nothing
    files = list(data_file.parent.glob(f"{data_file.name}.*.pid{child.pid}.*"))
    assert len(files) == 1, files
    data = coverage.CoverageData(str(files[0]))
    data.read()
    assert str(ROOT / "webhook_app" / "cli" / "__init__.py") in data.measured_files()
    assert data.has_arcs()  # branch coverage


def test_pre_commit_runs_the_checks_the_suite_runs():
    """.pre-commit-config.yaml: ruff, ruff format, mypy and import-linter, with the venv's tools."""
    import yaml

    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = {h["id"]: h for repo in config["repos"] for h in repo["hooks"]}
    assert set(hooks) >= {"ruff", "ruff-format", "mypy", "import-linter"}
    assert hooks["mypy"]["entry"].split()[1:] == ["webhook_app", "sandbox/commercelayer_sandbox"]
    for hook in hooks.values():
        assert (ROOT / hook["entry"].split()[0]).name in {"ruff", "mypy", "lint-imports"}
