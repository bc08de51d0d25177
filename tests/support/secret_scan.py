"""pytest plugin: the session fails if a secret the tests configured appears in anything printed.

Loaded from tests/conftest.py (`pytest_plugins = ["support.secret_scan"]`). When the session ends it
scans

* every log file a `procs.Service` wrote (`procs.LOG_PATHS`) and every `*.log` under the
  session's temporary directory (gunicorn, nginx and chromedriver logs of the deploy tests);
* the captured stdout, stderr and log sections of every test report, and every failure's text;
* the files under `test-artifacts/`;

for every secret the tests use: constants of the test modules whose names say SECRET, KEY, TOKEN
or PASSWORD (webhook secrets, client secrets, admin and replay keys), the secrets in the
environment of every `procs.Service` (`procs.SERVICE_ENVS`: CL_WEBHOOK_SECRETS entries,
CL_CLIENT_SECRET, admin and replay keys, database URL passwords), values given to
`register(...)`, and every access token the fake Commerce Layer issued (tests/support/fakecl.py registers
them). In log files it also looks for `Bearer <token>` the service's scrubber should have
redacted.

A finding fails the session: it is reported as a failed item `secret-scan` (so the closing line
says "1 failed") with where the secret was, never the secret itself, and the exit status is 1.
`test-artifacts/secret-scan.json` records what was scanned (files, bytes, secrets checked: their
sources and SHA-256 prefixes, never their values) and the findings, either way.

PYTEST_DONT_REWRITE: tests/support/fakecl.py imports this module before pytest loads it as a plugin, and
it has no asserts to rewrite.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

MIN_LENGTH = 8  # shorter values are too likely to occur by chance
_SECRETS: dict[str, str] = {}  # value -> where it came from
_NAME = re.compile(r"SECRET|KEY|TOKEN|PASSWORD|PASSWD", re.IGNORECASE)
_NOT_A_SECRET = re.compile(r"^[A-Z][A-Z0-9_]*$")  # the names of environment variables
_BEARER = re.compile(r"(?i)\bbearer\s+([A-Za-z0-9._~+/=-]{8,})")
_TESTS_DIR = Path(__file__).resolve().parents[1]
_REPORT = "secret-scan.json"


def register(*values: Any, source: str = "register()") -> None:
    """Scan for these values (str, bytes, or WebhookSecret-like objects with `.secret`)."""
    for value in values:
        value = getattr(value, "secret", value)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and len(value) >= MIN_LENGTH:
            _SECRETS.setdefault(value, source)


def registered() -> dict[str, str]:
    return dict(_SECRETS)


def _fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


_TEST_MODULES: set[str] = set()  # the modules the session collected tests from


def _collect_module_constants() -> None:
    """Secrets the test modules (and conftest, support, fakecl, ...) hold as module-level constants."""
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file or (not Path(file).resolve().is_relative_to(_TESTS_DIR) and module.__name__ not in _TEST_MODULES):
            continue
        for name, value in vars(module).items():
            if not name.isupper() or not _NAME.search(name):
                continue
            items = value if isinstance(value, (tuple, list, frozenset, set)) else (value,)
            for item in items:
                item = getattr(item, "secret", item)
                if isinstance(item, bytes):
                    item = item.decode("utf-8", "replace")
                if isinstance(item, str) and not _NOT_A_SECRET.match(item):
                    register(item, source=f"{module.__name__}.{name}")


_ENV_SECRET = re.compile(r"SECRET|KEYS?$|TOKEN|PASSWORD", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^:/@]+:([^@]+)@")


def register_env(env: dict[str, str], *, source: str) -> None:
    """The secrets in a service's environment: `label:secret` lists, key lists, URL passwords."""
    for name, value in env.items():
        m = _URL_PASSWORD.match(value)
        if m:
            register(m.group(1), source=f"{source} {name} password")
        if not _ENV_SECRET.search(name):
            continue
        for entry in (e.strip() for e in value.split(",")):
            label, sep, secret = entry.partition(":")
            register(
                secret if sep and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", label) else entry, source=f"{source} {name}"
            )


def _collect_service_envs() -> None:
    procs = sys.modules.get("support.procs")
    for env in getattr(procs, "SERVICE_ENVS", []):
        register_env(env, source="service env")


class _Scan:
    """What the session printed, gathered as it goes, and scanned once at the end."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []  # (where, text) from test reports
        self.seen: set[tuple[str, str]] = set()  # a later phase's report repeats earlier sections

    def add_report(self, report: Any) -> None:
        for title, content in getattr(report, "sections", ()):
            if content and (report.nodeid, title) not in self.seen:
                self.seen.add((report.nodeid, title))
                self.texts.append((f"{report.nodeid} {title}", content))
        text = getattr(report, "longreprtext", "")
        if text:
            self.texts.append((f"{report.nodeid} [{getattr(report, 'when', 'collect')}] failure text", text))


def _locate(text: str, value: str) -> tuple[int, str]:
    at = text.index(value)
    line = text.count("\n", 0, at) + 1
    start = text.rfind("\n", 0, at) + 1
    end = text.find("\n", at)
    context = text[start : end if end != -1 else len(text)][:300]
    return line, context.replace(value, "[SECRET]")


def _scan_text(where: str, text: str, secrets: dict[str, str], *, bearer: bool, findings: list[dict[str, Any]]) -> None:
    for value, source in secrets.items():
        if value in text:
            line, context = _locate(text, value)
            findings.append(
                {"where": where, "line": line, "secret": source, "sha256": _fingerprint(value), "context": context}
            )
    if bearer:
        for m in _BEARER.finditer(text):
            token = m.group(1)
            if token.startswith("[") or token.lower() in ("realm", "token"):
                continue
            line, context = _locate(text, token)
            findings.append(
                {
                    "where": where,
                    "line": line,
                    "secret": "a bearer token in a log",
                    "sha256": _fingerprint(token),
                    "context": context,
                }
            )


def _log_files(session: pytest.Session) -> tuple[list[Path], list[Path]]:
    procs = sys.modules.get("support.procs")
    service = [Path(p) for p in getattr(procs, "LOG_PATHS", [])]
    others: list[Path] = []
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None:
        try:
            base = factory.getbasetemp()
        except OSError:
            base = None
        if base is not None and base.exists():
            seen = {p.resolve() for p in service}
            others = [p for p in sorted(base.rglob("*.log")) if p.is_file() and p.resolve() not in seen]
    return [p for p in service if p.is_file()], others


def _read(path: Path, limit: int = 64 * 1024 * 1024) -> str:
    with path.open("rb") as f:
        return f.read(limit).decode("utf-8", "replace")


def run_scan(session: pytest.Session, scan: _Scan) -> dict[str, Any]:
    _collect_module_constants()
    _collect_service_envs()
    secrets = registered()
    findings: list[dict[str, Any]] = []
    scanned: dict[str, Any] = {
        "service_logs": [],
        "other_logs": [],
        "artifacts": [],
        "report_sections": {"count": 0, "bytes": 0},
    }
    service_logs, other_logs = _log_files(session)
    for kind, paths in (("service_logs", service_logs), ("other_logs", other_logs)):
        for path in paths:
            text = _read(path)
            scanned[kind].append({"path": str(path), "bytes": len(text.encode(errors="surrogatepass"))})
            _scan_text(str(path), text, secrets, bearer=True, findings=findings)
    for where, text in scan.texts:
        scanned["report_sections"]["count"] += 1
        scanned["report_sections"]["bytes"] += len(text.encode(errors="surrogatepass"))
        _scan_text(where, text, secrets, bearer=False, findings=findings)
    artifacts = Path(session.config.rootpath) / "test-artifacts"
    if artifacts.is_dir():
        for path in sorted(p for p in artifacts.rglob("*") if p.is_file() and p.name != _REPORT):
            data = path.read_bytes()
            scanned["artifacts"].append({"path": str(path), "bytes": len(data)})
            _scan_text(str(path), data.decode("utf-8", "replace"), secrets, bearer=False, findings=findings)
    sources: dict[str, int] = {}
    for source in secrets.values():
        key = (
            "fake Commerce Layer access tokens"
            if source.startswith("fakecl token")
            else "service env " + source.split()[-1]
            if source.startswith("service env")
            else source
        )
        sources[key] = sources.get(key, 0) + 1
    files = scanned["service_logs"] + scanned["other_logs"] + scanned["artifacts"]
    return {
        "ok": not findings,
        "secrets_checked": len(secrets),
        "secret_sources": dict(sorted(sources.items())),
        "secret_fingerprints": sorted(_fingerprint(v) for v in secrets),
        "files_scanned": len(files),
        "bytes_scanned": sum(f["bytes"] for f in files) + scanned["report_sections"]["bytes"],
        "scanned": scanned,
        "findings": findings,
    }


# --- hooks ----------------------------------------------------------------------------------------

_scan = _Scan()
_last: dict[str, Any] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    _TEST_MODULES.update(m.__name__ for m in (getattr(i, "module", None) for i in session.items) if m)
    _collect_module_constants()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _scan.add_report(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _scan.add_report(report)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    result = run_scan(session, _scan)
    out = Path(session.config.rootpath) / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / _REPORT).write_text(json.dumps(result, indent=2) + "\n")
    _last.clear()
    _last.update(result)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if result["ok"]:
        return
    lines = [f"{len(result['findings'])} secret(s) found in what the tests printed:"]
    for f in result["findings"]:
        lines.append(f"  {f['secret']} (sha256 {f['sha256']}) in {f['where']}, line {f['line']}: {f['context']}")
    lines.append(f"details: {out / _REPORT}")
    text = "\n".join(lines)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if reporter is None:
        sys.stderr.write(text + "\n")
        return
    # A failed item in the terminal's own tally: listed under FAILURES and in the closing line.
    report = pytest.TestReport(
        nodeid="secret-scan",
        location=(str(Path(__file__).name), 0, "secret scan"),
        keywords={},
        outcome="failed",
        longrepr=text,
        when="call",
    )
    reporter.stats.setdefault("failed", []).append(report)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _last:
        terminalreporter.write_line(
            f"secret scan: {_last['secrets_checked']} secrets checked in {_last['files_scanned']} files and "
            f"{_last['scanned']['report_sections']['count']} captured sections ({_last['bytes_scanned']} bytes): "
            + ("clean" if _last["ok"] else f"{len(_last['findings'])} FOUND")
        )
