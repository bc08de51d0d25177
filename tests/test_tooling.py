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


def test_mypy_is_strict_without_blanket_ignores():
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert mypy.get("strict") is True
    assert "ignore-without-code" in mypy.get("enable_error_code", [])
    # missing imports are let through only for the untyped libraries listed, never everywhere
    assert "ignore_missing_imports" not in mypy
    for override in mypy.get("overrides", []):
        assert "ignore_errors" not in override, override
        assert all(not m.startswith("webhook_app") for m in override["module"]), override
