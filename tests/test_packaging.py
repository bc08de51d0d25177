"""The service's distribution carries the service only: the sandbox is a separate distribution.

Builds the wheel the way a user's `pip install .` does and reads what is in it."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # From a copy of what the wheel is built from: an in-tree build/ left by an earlier build
    # would be packed again, files that no longer exist included.
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "webhook_app", src / "webhook_app", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("webhook_app-*.whl")
    return whl


def test_wheel_has_no_sandbox_and_no_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("webhook_app/worker/loop.py") for n in names)
    # webhook_app/cli/sandbox.py only hands `webhook-app sandbox` over to the separate distribution
    assert not [n for n in names if ("sandbox" in n and n != "webhook_app/cli/sandbox.py") or n.startswith("tests/")]
    assert any(n.endswith("store/schema/sqlite/001.sql") for n in names)
    assert any(n.endswith("web/templates/admin/index.html") for n in names)
    # The topics the intake accepts and the resource model policies are checked against.
    assert {"webhook_app/data/topics.json", "webhook_app/data/resources.json"} <= set(names)


def test_runtime_dependencies_are_what_the_service_uses(wheel):
    meta = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA")))
        .decode()
    )
    runtime = sorted(
        Requirement(line.split(":", 1)[1]).name
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    )
    assert runtime == [
        "flask",
        "google-re2",
        "gunicorn",
        "itsdangerous",
        "orjson",
        "prometheus-client",
        "requests",
        "uvloop",
    ]


def test_service_package_never_imports_the_sandbox():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "webhook_app").rglob("*.py")
        if "commercelayer_sandbox" in p.read_text() and p.relative_to(ROOT).as_posix() != "webhook_app/cli/sandbox.py"
    ]
    assert offenders == []


def test_sandbox_command_without_the_sandbox_says_how_to_install(tmp_path):
    # A Python that sees webhook_app but not commercelayer_sandbox: the service as installed alone.
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'commercelayer_sandbox': raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from webhook_app.cli import main\n"
        "sys.exit(main(['sandbox', '--port', '0']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2
    assert "pip install ./sandbox" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_the_gunicorn_the_suite_runs_is_inside_the_range_the_package_declares():
    """pyproject.toml accepts the gunicorn versions the suite has run, not any later one: the
    version installed here and the one requirements.lock pins are inside its range, which has an
    upper bound (runtime.py embeds gunicorn; a new major version is tried before it is allowed)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (declared,) = [r for r in map(Requirement, project["dependencies"]) if r.name == "gunicorn"]
    locked = re.search(r"^gunicorn==(\S+)", (ROOT / "requirements.lock").read_text(), re.M)
    assert locked is not None
    assert declared.specifier.contains(locked.group(1)), (str(declared.specifier), locked.group(1))
    assert declared.specifier.contains(importlib.metadata.version("gunicorn")), str(declared.specifier)
    assert any(s.operator == "<" for s in declared.specifier), str(declared.specifier)
