"""Helpers to run the real service as processes in end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, *, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def wait_until(predicate, *, timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s")


# Every log file a Service wrote in this session, and the environment each was given:
# tests/support/secret_scan.py checks the logs (and all output) for the secrets in those environments.
LOG_PATHS: list[Path] = []
SERVICE_ENVS: list[dict[str, str]] = []


class Service:
    """`webhook-app <command>` as a child process with its output captured to a log file."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.operator_url: str | None = None
        if args[:1] == ["serve"] and "WEBHOOK_APP_OPERATOR_BIND" not in env:
            # its default, 127.0.0.1 on the public port + 1, is often taken by one of the suite's own
            # outgoing connections when the public port is an ephemeral one (free_port): choose one
            operator = f"127.0.0.1:{free_port()}"
            env = {**env, "WEBHOOK_APP_OPERATOR_BIND": operator}
            self.operator_url = f"http://{operator}"
        LOG_PATHS.append(log_path)
        SERVICE_ENVS.append(dict(env))
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CL_", "WEBHOOK_APP_"))}
        full_env.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "webhook_app", *args],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group (no clean-up, as a crash)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def private_nginx_conf(prefix: Path, http_body: str, *, connections: int = 256) -> Path:
    """A config for an nginx of the test's own, all its files under `prefix`, with `http_body`
    (upstreams and servers) inside `http { }`; written to prefix/nginx.conf."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(f"""{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
{http_body}}}
""")
    return conf
