"""The package stays clean under the linters people expect (ruff) and type-checks (mypy)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize(
    "tool,args",
    [
        ("ruff", ["check", "webhook_app", "sandbox"]),
        ("ruff", ["format", "--check", "webhook_app", "sandbox", "tests", "bench"]),
        # no cache: one left by `mypy webhook_app` alone resolves the sandbox differently
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
