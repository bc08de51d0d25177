"""Static analysis and the dependency audit, run with the suite.

* bandit on the package: no finding of medium severity or more (`bandit -r webhook_app -q -ll`).
  The reviewed ones carry `# nosec BXXX  # reason` on their line. Always runs (bandit is in the
  test extra); without bandit installed it is skipped, except under CI, where it must run.
* pip-audit on requirements.lock, against PyPI's vulnerability data:
  `pip-audit -r requirements.lock --strict -s pypi --disable-pip --require-hashes`. pip-audit's
  PyPI service reads PyPI's per-release JSON (`/pypi/NAME/VERSION/json`); where that answers it
  runs, and must find nothing. Skipped, saying why, when pypi.org cannot be reached, except under
  CI.
* Some registry fronts and mirrors serve each project's JSON but not the per-release one, so
  pip-audit finds nothing it can audit (every package "not found"; with `--strict` an error). The
  same vulnerability data comes with the project's JSON for its latest release, so
  `test_locked_packages_have_no_known_vulnerability` checks each locked package that is its
  project's latest release there, and reports the others as not audited (regenerating the lock
  brings them up to date). How many are behind is a report, never a failure: a test must not
  turn red because someone published a release. It runs wherever pypi.org answers, and must
  under CI.
* The lock pins, with hashes, every runtime and test requirement pyproject.toml names.

Results go to test-artifacts/bandit.json and test-artifacts/pip-audit.json.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).parent.parent
LOCK = ROOT / "requirements.lock"
ARTIFACTS = ROOT / "test-artifacts"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s\\;]+)", re.MULTILINE)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    return {canonical(n): v for n, v in PIN.findall(LOCK.read_text())}


def unavailable(why: str) -> None:
    """Skip, visibly; under CI the check must run, so fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this check: {why}")
    pytest.skip(why)


def need_module(name: str) -> None:
    if importlib.util.find_spec(name) is None:
        unavailable(f"{name} is not installed (pip install '.[test]')")


def pypi_api() -> str:
    """'release' if PyPI's per-release JSON answers, 'project' if only the project JSON does."""
    name, version = next(iter(sorted(pins().items())))
    try:
        r = requests.get(f"https://pypi.org/pypi/{name}/{version}/json", timeout=10)
        if r.status_code == 200:
            return "release"
        r = requests.get(f"https://pypi.org/pypi/{name}/json", timeout=10)
        r.raise_for_status()
        return "project"
    except requests.RequestException as exc:
        unavailable(f"pypi.org cannot be reached: {type(exc).__name__}")
    raise AssertionError("unreachable")


# --- the lock ----------------------------------------------------------------------------------------


def test_the_lock_pins_every_requirement_with_hashes():
    """Every runtime, postgres and test requirement of pyproject.toml is in the lock, every entry
    is pinned (==) and carries at least one sha256 hash; the audit tools are locked too."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [
        *project["dependencies"],
        *project["optional-dependencies"]["postgres"],
        *project["optional-dependencies"]["test"],
    ]
    names = {canonical(re.split(r"[\s<>=!~\[;]", w, maxsplit=1)[0]) for w in wanted}
    locked = pins()
    assert names - set(locked) == set(), "regenerate requirements.lock (see its header)"
    assert {"bandit", "pip-audit"} <= set(locked)
    entries = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text().split("\n\n", 1)[-1])
    for entry in entries:
        if entry.strip() and not entry.startswith("#"):
            assert "==" in entry.split("\\")[0] and "--hash=sha256:" in entry, entry[:120]


# --- bandit -----------------------------------------------------------------------------------------


def test_bandit_finds_nothing_of_medium_severity_or_more():
    need_module("bandit")
    proc = subprocess.run(
        [sys.executable, "-m", "bandit", "-r", "webhook_app", "-q", "-ll", "-f", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(proc.stdout)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "bandit.json").write_text(
        json.dumps(
            {
                "command": "bandit -r webhook_app -q -ll",
                "findings": [
                    {
                        k: r[k]
                        for k in (
                            "filename",
                            "line_number",
                            "test_id",
                            "issue_severity",
                            "issue_confidence",
                            "issue_text",
                        )
                    }
                    for r in report["results"]
                ],
                "skipped_by_nosec": report["metrics"]["_totals"].get("skipped_tests", 0),
                "loc": report["metrics"]["_totals"]["loc"],
            },
            indent=2,
        )
        + "\n"
    )
    found = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]]
    assert proc.returncode == 0 and found == [], "\n".join(found) or proc.stderr[-2000:]


# --- pip-audit ------------------------------------------------------------------------------------


def test_pip_audit_finds_no_known_vulnerability_in_the_lock():
    need_module("pip_audit")
    if pypi_api() != "release":
        pytest.skip(
            "pypi.org here serves no per-release JSON, which pip-audit's PyPI service reads "
            "(it would audit nothing); test_locked_packages_have_no_known_vulnerability "
            "checks the same data from the project JSON"
        )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip_audit",
            "-r",
            str(LOCK),
            "--strict",
            "-s",
            "pypi",
            "--disable-pip",
            "--require-hashes",
            "--progress-spinner",
            "off",
            "-f",
            "json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "pip-audit.json").write_text(proc.stdout or json.dumps({"stderr": proc.stderr[-4000:]}))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _project_vulnerabilities(item: tuple[str, str]) -> dict:
    name, version = item
    r = requests.get(f"https://pypi.org/pypi/{name}/json", timeout=30)
    r.raise_for_status()
    doc = r.json()
    latest = doc["info"]["version"]
    vulns = [v["id"] for v in doc.get("vulnerabilities") or [] if not v.get("withdrawn")]
    return {
        "name": name,
        "version": version,
        "latest": latest,
        "audited": latest == version,
        "vulnerabilities": vulns if latest == version else [],
    }


def test_locked_packages_have_no_known_vulnerability():
    api = pypi_api()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(_project_vulnerabilities, sorted(pins().items())))
    vulnerable = [r for r in results if r["vulnerabilities"]]
    not_audited = [f"{r['name']}=={r['version']} (latest {r['latest']})" for r in results if not r["audited"]]
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "pip-audit.json" if api == "project" else ARTIFACTS / "pypi-project-audit.json").write_text(
        json.dumps(
            {
                "source": "PyPI project JSON, latest release's vulnerabilities",
                "packages": len(results),
                "audited": sum(r["audited"] for r in results),
                "vulnerable": vulnerable,
                "not_audited": not_audited,
            },
            indent=2,
        )
        + "\n"
    )
    if not_audited:  # a report (test-artifacts/ and -rP output), not a failure
        print(
            f"{len(not_audited)} of {len(results)} not audited (not their project's latest release; "
            "regenerate the lock):",
            *not_audited,
            sep="\n  ",
        )
    assert vulnerable == [], vulnerable
    assert results and all(r["latest"] for r in results)  # every locked package was looked up
