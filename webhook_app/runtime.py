"""Process management: gunicorn for the web side, the worker loop, and `serve` running both.

`run_web` embeds gunicorn (sync workers; each worker process builds its own app and database
connection after the fork) through its documented Application class and server hooks; the commit
writer beside it is started again, when it dies, by a keeper process forked before the workers.
`run_front_web` is the same gunicorn for `serve`, with the front in each of its workers
(`webhook_app.front_worker`). `run_worker` runs the job loop until SIGTERM/SIGINT, finishing the
job in hand. `run_serve` is a small supervisor: it opens the listening sockets, starts that web
server (which inherits them) and `worker` as child processes, restarts either if it dies, and
stops them on SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from typing import Any, NoReturn

from gunicorn.app.base import Application

from webhook_app.backoff import doubling
from webhook_app.config import DEFAULT_BIND, Settings
from webhook_app.errors import ConfigError
from webhook_app.store import group_commit

log = logging.getLogger(__name__)

#: a worker that ran this long before exiting was healthy: the restart delays start again from the first
WORKER_STABLE_SECONDS = 60.0


def restart_delay(restarts: int, *, ran_for: float) -> tuple[int, float]:
    """(restarts so far, seconds to wait) for a worker that exited after running `ran_for` s:
    doubling from 1 s to 30 s, started afresh after a worker that had been running fine."""
    if ran_for > WORKER_STABLE_SECONDS:
        restarts = 0
    restarts += 1
    return restarts, doubling(restarts, base=1.0, cap=30.0)


# Limits that keep one slow or hostile client from tying up the server (see
# docs/explanation/security.md, *Limits*).
GUNICORN_DEFAULTS: dict[str, Any] = {
    "worker_class": "webhook_app.sync_worker.SyncWorker",  # gunicorn's sync worker, refusing in JSON
    "timeout": 30,
    "graceful_timeout": 30,
    "keepalive": 5,
    "limit_request_line": 4094,
    "limit_request_fields": 100,
    "limit_request_field_size": 8190,
    "accesslog": None,
    "errorlog": "-",
    "loglevel": "warning",
    "preload_app": False,
    "proc_name": "webhook-app-web",
    # Forwarded headers: gunicorn takes `X-Forwarded-Proto` (the scheme, and so the admin cookie's
    # Secure flag) only from the proxies in FORWARDED_ALLOW_IPS (none unless set; run_web), never
    # from gunicorn's default of any local process. `SCRIPT_NAME`/`PATH_INFO` headers are never
    # taken from anyone (gunicorn's default trusts them from those proxies): the app is mounted at
    # the root, or behind a proxy's X-Forwarded-Prefix (WEBHOOK_APP_FORWARDED_HOPS).
    "forwarder_headers": "",
    "secure_scheme_headers": {"X-FORWARDED-PROTO": "https"},
    # gunicorn >= 25.1 would open a control socket in $XDG_RUNTIME_DIR or $HOME/.gunicorn/ (shared
    # by every instance of the user, and replaced by the next one); nothing here uses it.
    "control_socket_disable": True,
}


def prepare_metrics_dir() -> str:
    """Give prometheus_client's multiprocess mode a directory, before anything imports it.

    A fresh directory per start (unless the operator set PROMETHEUS_MULTIPROC_DIR), so counters
    of an earlier run are not added in. Children (gunicorn workers, `serve`'s worker) inherit it.
    """
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="webhook-app-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    os.makedirs(path, exist_ok=True)
    st = os.stat(path)
    # Whoever may write in the directory can plant or change the files every scrape adds up, or
    # symlinks named like the files the processes will make (counter_PID.db), which they follow:
    # a service running as root wrote through them, or its workers died failing to read the target.
    if st.st_uid != os.geteuid():
        raise ConfigError(
            "PROMETHEUS_MULTIPROC_DIR",
            f"{path} belongs to another user (uid {st.st_uid}), who could plant files or symlinks in it;"
            " name a directory of this user's, or unset it (a private one is made per start)",
        )
    if st.st_mode & 0o002:
        raise ConfigError(
            "PROMETHEUS_MULTIPROC_DIR",
            f"{path} is a directory every user may write in (mode {st.st_mode & 0o7777:o}), who could plant"
            " files or symlinks in it; make it 0700, or unset it (a private one is made per start)",
        )
    return path


def mark_metrics_process_dead(pid: int) -> None:
    """prometheus_client's bookkeeping for a process of this host that exited (a gunicorn worker
    replaced after a crash, a timeout or max_requests): its live gauges stop counting."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]  # unannotated in prometheus_client


class _Gunicorn(Application):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn with our defaults, then a config file if given, then explicit command-line values
    (`worker_class` among them: any of gunicorn's settings may be given). The commit writer is
    looked after through gunicorn's documented server hooks only: `on_starting` starts its keeper,
    `on_exit` (after the workers have stopped) stops it; a config file's own hooks still run."""

    def __init__(
        self,
        settings: Settings,
        defaults: Mapping[str, Any],
        explicit: Mapping[str, Any],
        config_file: str | None,
        *,
        commit_writer: CommitWriterProcess | None = None,
    ) -> None:
        self.settings = settings
        self.defaults = dict(defaults)
        self.explicit = dict(explicit)
        self.config_file = config_file
        self.commit_writer = commit_writer  # before super().__init__(), which loads the config
        super().__init__()

    def load_config(self) -> None:
        for layer in (self.defaults, None, self.explicit):
            if layer is None:
                if self.config_file:
                    self.load_config_from_file(self.config_file)
                continue
            for key, value in layer.items():
                if key in self.cfg.settings and value is not None:
                    self.cfg.set(key, value)
        # gunicorn's documented server hooks, each running ours, then the one it had (a config
        # file's own, or gunicorn's no-op)
        cfg = self.cfg
        child_exited, starting, exiting = cfg.child_exit, cfg.on_starting, cfg.on_exit
        writer = self.commit_writer

        def child_exit(server: Any, worker: Any) -> None:
            mark_metrics_process_dead(worker.pid)
            child_exited(server, worker)

        def on_starting(server: Any) -> None:
            if writer is not None:
                writer.start()  # in the master, before its first worker
            starting(server)

        def on_exit(server: Any) -> None:
            if writer is not None:
                writer.stop()  # in the master, after its workers
            exiting(server)

        cfg.set("child_exit", child_exit)
        cfg.set("on_starting", on_starting)
        cfg.set("on_exit", on_exit)

    def load(self) -> Any:
        from webhook_app import tracing
        from webhook_app.web import create_app

        tracing.configure()  # in each gunicorn worker, after the fork (the exporter's thread)
        writer = self.commit_writer
        return create_app(self.settings, commit_channel=writer.channel if writer is not None else None)


def run_web(settings: Settings, *, bind: str | None, workers: int | None = None, config_file: str | None = None) -> int:
    """Serve the web app with gunicorn (blocks until gunicorn exits), its commit writer beside it."""
    defaults = dict(GUNICORN_DEFAULTS, bind=[DEFAULT_BIND], workers=settings.web_workers)
    # gunicorn's own variable, read here rather than by gunicorn (whose default without it trusts 127.0.0.1)
    defaults["forwarded_allow_ips"] = os.environ.get("FORWARDED_ALLOW_IPS", "")
    explicit: dict[str, Any] = {}
    if bind:
        explicit["bind"] = [bind]
    if workers:
        explicit["workers"] = workers
    return _run_gunicorn(settings, defaults, explicit, config_file)


def _run_gunicorn(
    settings: Settings, defaults: Mapping[str, Any], explicit: Mapping[str, Any], config_file: str | None
) -> int:
    """gunicorn with `defaults` and `explicit` settings (and a config file), its commit writer beside it."""
    try:
        writer = CommitWriterProcess.for_settings(settings)
    except OSError as exc:  # gunicorn needs the temporary directory as much (its workers' heartbeat files)
        log.error("cannot start the commit writer: no private directory for its socket", extra={"error": str(exc)})
        return 1
    app = _Gunicorn(settings, defaults, explicit, config_file, commit_writer=writer)
    try:
        app.run()
    finally:
        # The on_exit hook has stopped the writer, unless gunicorn's master left its loop on an
        # error. gunicorn's workers are forked inside app.run(), and one that exits unwinds
        # through here too: stop() acts only in the master.
        if writer is not None:
            writer.stop()
    return 0


def run_front_web(settings: Settings, *, fds: list[int], operator: int | str | None, workers: int | None) -> int:
    """`serve`'s web server: gunicorn whose workers each run the buffering front and the app
    (`webhook_app.front_worker`) on the inherited listening sockets `fds`, its commit writer
    beside it. `operator`: the index in `fds` of the operator listener, "all" or None."""
    import resource

    from webhook_app import front, front_worker

    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    front_worker.OPERATOR = operator  # read by the workers gunicorn forks from this process
    front_worker.LIMITS = front.Limits.from_settings(settings, os.environ, nofile=nofile if nofile > 0 else 1024)
    defaults = dict(
        GUNICORN_DEFAULTS,
        bind=[f"fd://{fd}" for fd in fds],
        workers=workers or settings.web_workers,
        worker_class="webhook_app.front_worker.FrontWorker",
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", ""),
    )
    return _run_gunicorn(settings, defaults, {}, None)


#: how long the keeper waits for a stopping writer to commit what it holds before killing it
WRITER_STOP_S = 15.0


class CommitWriterProcess:
    """The commit writer of one `web` (store/group_commit.py), seen from gunicorn's master.

    The master makes the channel (the writer's private directory and key, and the shared status
    `/readyz` reads) before gunicorn starts, so that its workers inherit it. From the `on_starting`
    hook, before the first worker, it forks the writer's keeper (`WriterKeeper`), a process of its
    own that starts `webhook-app commit-writer` and starts it again if it dies: gunicorn's master
    runs no code of ours in its loop, and its SIGCHLD handler reaps whichever child exits, so the
    writer's parent is the keeper, not the master. The master holds the write end of a pipe the
    keeper watches (its workers inherit it): from the `on_exit` hook, after the workers have
    stopped, the master closes it, and the keeper stops the writer and exits; if the master dies
    instead, the pipe ends when its workers have gone too. While no writer answers (also after
    the keeper itself was killed: nothing restarts it), the web workers commit their own deliveries."""

    def __init__(self, channel: group_commit.Channel) -> None:
        self.channel = channel
        self.creator = os.getpid()
        self.owner: int | None = None  # the master's pid, once the keeper is started
        self.keeper: int | None = None
        self._stop_w = self._gone_r = -1

    @classmethod
    def for_settings(cls, settings: Settings) -> CommitWriterProcess | None:
        """None without group commit; OSError if the channel's directory cannot be made."""
        if not settings.group_commit or not group_commit.supported(settings.database_url):
            return None
        return cls(group_commit.Channel.create())

    def start(self) -> None:
        """In gunicorn's master, before its workers: fork the keeper (a process with no thread,
        so the fork copies no lock held by another one). The master's end of the keeper's pipes
        is inherited by the workers, the keeper's own ends by nobody."""
        if self.keeper is not None:
            return
        stop_r, stop_w = os.pipe()
        gone_r, gone_w = os.pipe()
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in (stop_r, stop_w, gone_r, gone_w):
                os.close(fd)
            log.error(
                "cannot start the commit writer's keeper; web workers commit their own", extra={"error": str(exc)}
            )
            return
        if pid == 0:
            os.close(stop_w)
            os.close(gone_r)
            _keep_writer(self.channel, stop_r)  # never returns
        os.close(stop_r)
        os.close(gone_w)  # its end: the keeper's exit closes the last copy
        self.owner, self.keeper, self._stop_w, self._gone_r = os.getpid(), pid, stop_w, gone_r

    def stop(self, timeout: float = WRITER_STOP_S + 5.0) -> None:
        """In the master, after gunicorn's workers: end the keeper's pipe, wait for it to stop
        the writer and exit, and remove the channel's directory."""
        if self.keeper is None:
            if self.owner is None and os.getpid() == self.creator:  # gunicorn never started (--check-config)
                self.channel.remove()
            return
        if os.getpid() != self.owner:
            return
        keeper, self.keeper = self.keeper, None
        os.close(self._stop_w)
        readable, _, _ = select.select([self._gone_r], [], [], timeout)
        if not readable:  # its pipe is open: the keeper is there, stuck
            with contextlib.suppress(OSError):
                os.kill(keeper, signal.SIGKILL)  # its writer's stdin ends: it commits what it holds and exits
        os.close(self._gone_r)
        with contextlib.suppress(ChildProcessError):  # gunicorn reaped it if it died earlier
            os.waitpid(keeper, 0)
        self.channel.remove()


def _keep_writer(channel: group_commit.Channel, stop_fd: int) -> NoReturn:
    """The keeper's process, forked from gunicorn's master: it never returns into gunicorn."""
    code = 1
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # stopped by its pipe's end only
            signal.signal(sig, signal.SIG_IGN)
        WriterKeeper(channel, stop_fd=stop_fd).run()
        code = 0
    except BaseException:  # a bug: said, and the writer's stdin ends with this process
        log.exception("the commit writer's keeper failed; web workers commit their own deliveries")
    finally:
        os._exit(code)


class WriterKeeper:
    """Starts `webhook-app commit-writer`, hears what it says, and starts another after the
    supervisor's backoff (restart_delay) if it exits, until `stop_fd` reaches its end.

    The writer's stdin is a pipe from the keeper: the first line is the channel (the private
    socket directory and the key, which thus never appear in an argument or the environment),
    then nothing; its end tells the writer to commit what it holds and exit. Its stdout is a pipe
    on which it says `ready` or `unavailable <why>`, kept in the channel's status for `/readyz`."""

    def __init__(self, channel: group_commit.Channel, *, stop_fd: int) -> None:
        self.channel = channel
        self.stop_fd = stop_fd
        self.command = [sys.executable, "-m", "webhook_app", "commit-writer"]  # our own interpreter and module
        self.proc: subprocess.Popen[bytes] | None = None
        self.heard = b""
        self.started = 0.0
        self.restarts = 0
        self.restart_at: float | None = None

    def run(self) -> None:
        self._spawn()
        while True:
            watched: list[Any] = [self.stop_fd]
            if self.proc is not None and self.proc.stdout is not None:
                watched.append(self.proc.stdout)
            timeout = None if self.restart_at is None else max(0.0, self.restart_at - time.monotonic())
            readable, _, _ = select.select(watched, [], [], timeout)
            if self.stop_fd in readable and not os.read(self.stop_fd, 64):
                break
            if len(watched) > 1 and watched[1] in readable:
                self._hear()
            if self.restart_at is not None and time.monotonic() >= self.restart_at:
                self._spawn()
        self._stop_writer()
        self.channel.remove()

    def _spawn(self) -> None:
        self.started = time.monotonic()
        self.restart_at = None
        self.heard = b""
        self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # noqa: S603
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(self.channel.for_writer())
            self.proc.stdin.flush()
        except OSError:
            pass  # it died at once: its stdout's end says so next

    def _hear(self) -> None:
        """Read what the writer said; at its stdout's end, note its exit and when to start another."""
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        said = os.read(proc.stdout.fileno(), 4096)
        if said:
            self._heard(said)
            return
        code = self._reap(proc, timeout=WRITER_STOP_S)
        self.proc = None
        self.restarts, delay = restart_delay(self.restarts, ran_for=time.monotonic() - self.started)
        self.restart_at = time.monotonic() + delay
        log.warning(
            "commit writer exited; web workers commit their own deliveries until it is back",
            extra={"exit_code": code, "restart_in_s": delay},
        )

    def _heard(self, said: bytes) -> None:
        self.heard += said
        status = self.channel.status
        while b"\n" in self.heard:
            line, _, self.heard = self.heard.partition(b"\n")
            if status is None:
                continue
            if line == b"ready":
                status.set_problem(None)
            elif line.startswith(b"unavailable "):
                status.set_problem("the commit writer cannot listen: " + line[12:].decode(errors="replace"))

    def _stop_writer(self) -> None:
        """End the writer's stdin and wait for it, killing it after WRITER_STOP_S."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        self._reap(proc, timeout=WRITER_STOP_S)

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes], *, timeout: float) -> int:
        """Its exit code, waiting up to `timeout` seconds before killing it; its pipes closed."""
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        return code


#: a writer that could not listen tries again this often (it said so once)
BIND_RETRY_S = 5.0


def run_commit_writer(settings: Settings) -> int:
    """The writer's process: read the channel from stdin, then serve this `web`'s workers until
    stdin ends."""
    from webhook_app import metrics
    from webhook_app.store import open_store

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopped by its parent, after gunicorn's workers
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    watch = sys.stdin.fileno()
    try:
        channel = group_commit.Channel.from_writer_line(_first_line(watch, timeout=10.0))
    except ValueError:
        log.error("commit writer: no channel on stdin; it is started by `webhook-app web`, not by hand")
        return 2
    store = open_store(settings.database_url, timeout=settings.db_timeout)
    try:
        writer = group_commit.CommitWriter(
            store, channel, max_body_bytes=settings.max_body_bytes, on_batch=metrics.record_commit_batch
        )
        problem = writer.bind()
        if problem is not None:
            log.error(
                "commit writer cannot listen; web workers commit their own deliveries, /readyz says unavailable",
                extra={"reason": problem, "retry_every_s": BIND_RETRY_S},
            )
            _tell_parent(f"unavailable {problem}")
        while problem is not None:  # tried again quietly: the line above said it
            ready, _, _ = select.select([watch], [], [], BIND_RETRY_S)
            if ready and not os.read(watch, 4096):
                return 0
            problem = writer.bind()
        log.info("commit writer ready", extra={"pid": os.getpid(), "socket": channel.path})
        _tell_parent("ready")
        writer.serve(watch_fd=watch)
    except Exception:  # a bug: said with its traceback (and its exit code, by the keeper)
        log.exception("commit writer failed")
        return 1
    finally:
        store.close()
    return 0


def _first_line(fd: int, *, timeout: float) -> bytes:
    """The first line on `fd` (without its newline); ValueError if none arrives in time."""
    got = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in got:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk or len(got) > 64 * 1024:
            raise ValueError("no line")
        got += chunk
    return got.partition(b"\n")[0]


def _tell_parent(line: str) -> None:
    with contextlib.suppress(OSError):  # the parent is gone: stdin's end stops this writer next
        os.write(sys.stdout.fileno(), line.encode(errors="replace").replace(b"\n", b" ") + b"\n")


def run_worker(settings: Settings, *, once: bool = False, metrics_port: int | None = None) -> int:
    from webhook_app import metrics, tracing
    from webhook_app.commercelayer.client import CommerceLayerClient
    from webhook_app.ops.anonymization import Anonymizer
    from webhook_app.policy import load_policy
    from webhook_app.store import open_store
    from webhook_app.worker import Worker, noting_trace_ids

    tracing.configure()
    store = open_store(settings.database_url, timeout=settings.db_timeout)
    client = None
    if not settings.shadow and settings.organizations_path is None:
        # PostgreSQL keeps the rate limit for all workers together; SQLite's is per process.
        # Each call's metrics, and its Commerce Layer trace id on the attempt in progress.
        client = CommerceLayerClient.from_settings(
            settings, limiter=store.rate_limiter(settings.cl_rate_limits), on_call=noting_trace_ids(metrics.record_call)
        )
    policy = load_policy(settings.policy_path)
    tenants = _agency_tenants(settings, store)
    worker = Worker(
        store=store,
        policy=policy,
        settings=settings,
        client=client if tenants is None else None,
        observer=metrics.record_worker_event,
        on_poll=metrics.record_worker_poll,
        handlers=Anonymizer(store, enabled=settings.honour_anonymization).handlers(),
        tenants=tenants,
    )
    worker.check_credentials_at_start()  # one line either way; runs on (Commerce Layer may be down)
    if metrics_port:
        metrics.serve_worker_metrics(metrics_port, store, policy=policy, enforce=not settings.shadow)
    guard_store = guard_client = None
    guard_clients: list[Any] = []
    try:
        if once:
            worker.drain()
            return 0
        stop = threading.Event()
        if not settings.shadow and settings.circuit_check_interval > 0 and tenants is None:
            assert client is not None
            guard_store, guard_client = _start_circuit_guard(settings, policy, stop, client.limiter)
        elif tenants is not None and settings.circuit_check_interval > 0:
            guard_store, guard_clients = _start_agency_circuit_guards(settings, tenants, stop)

        def _stop(signum: int, _frame: object) -> None:
            log.info("stopping worker", extra={"signal": signal.Signals(signum).name})
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        worker.run(stop)
        return 0
    finally:
        tenant_clients = [t.client for t in (tenants or {}).values()]
        for closable in (client, guard_client, *guard_clients, guard_store, *tenant_clients):
            if closable is not None:
                closable.close()
        store.close()
        tracing.shutdown()  # flush the spans still buffered


def _agency_tenants(settings: Settings, store: Any) -> dict[str, Any] | None:
    """Agency mode: each organization's settings view, policy and (enforce mode) client; None
    for one organization. One rate budget per egress address: every organization's client draws
    from one limiter (shared by every worker on PostgreSQL), the token endpoint's likewise."""
    from webhook_app import metrics
    from webhook_app.commercelayer.client import CommerceLayerClient
    from webhook_app.organizations import load_organizations
    from webhook_app.policy import load_policy
    from webhook_app.ratelimit import LocalRateLimiter
    from webhook_app.worker import Tenant, noting_trace_ids

    orgs = load_organizations(settings)
    if not orgs.agency:
        return None
    limiter = store.rate_limiter(settings.cl_rate_limits)
    auth_limiter = LocalRateLimiter(settings.cl_auth_rate_limits)
    tenants = {}
    for org in orgs:
        view = org.settings(settings)
        org_client = None
        if not view.shadow:
            org_client = CommerceLayerClient.from_settings(
                view,
                limiter=limiter,
                auth_limiter=auth_limiter,
                on_call=noting_trace_ids(metrics.organization_call_recorder(org.slug)),
            )
        tenants[org.slug] = Tenant(view, load_policy(org.policy_path), org_client)
    return tenants


def _start_circuit_guard(settings: Settings, policy: Any, stop: threading.Event, limiter: Any) -> tuple[Any, Any]:
    """The circuit guard in a thread of the worker process, with its own client and store
    connection (a backfill may take minutes; jobs go on meanwhile), sharing the worker's rate limit."""
    from webhook_app import metrics
    from webhook_app.commercelayer.client import CommerceLayerClient
    from webhook_app.ops.circuit import CircuitGuard
    from webhook_app.store import open_store

    store = open_store(settings.database_url, timeout=settings.db_timeout)
    client = CommerceLayerClient.from_settings(settings, limiter=limiter, on_call=metrics.record_call)
    guard = CircuitGuard.from_settings(
        settings, client=client, store=store, policy=policy, on_check=metrics.record_circuit_check
    )
    thread = threading.Thread(
        target=guard.run, args=(stop, settings.circuit_check_interval), name="circuit-guard", daemon=True
    )
    thread.start()
    return store, client


def _start_agency_circuit_guards(
    settings: Settings, tenants: Mapping[str, Any], stop: threading.Event
) -> tuple[Any, list[Any]]:
    """Agency mode: one circuit guard per enforce-mode organization, each with a client of its own
    (that organization's credentials and API, drawing from the shared rate budget) and its backfill
    queued under it; one thread checks them in turn every interval, on one store connection."""
    from webhook_app import metrics
    from webhook_app.commercelayer.client import CommerceLayerClient
    from webhook_app.ops.circuit import CircuitGuard
    from webhook_app.store import open_store

    enforced = {slug: t for slug, t in tenants.items() if t.client is not None}
    if not enforced:
        return None, []
    store = open_store(settings.database_url, timeout=settings.db_timeout)
    clients: list[Any] = []
    guards = []
    for slug, tenant in enforced.items():
        client = CommerceLayerClient.from_settings(
            tenant.settings,
            limiter=tenant.client.limiter,
            auth_limiter=tenant.client.auth_limiter,
            on_call=metrics.organization_call_recorder(slug),
        )
        clients.append(client)
        guards.append(
            CircuitGuard.from_settings(
                settings,
                client=client,
                store=store,
                policy=tenant.policy,
                on_check=metrics.record_circuit_check,
                organization=slug,
            )
        )

    def run() -> None:
        while not stop.is_set():
            for guard in guards:
                if stop.is_set():
                    break
                guard.check()
            stop.wait(settings.circuit_check_interval)

    threading.Thread(target=run, name="circuit-guards", daemon=True).start()
    return store, clients


WORKER_NICE = 10  # `serve`'s job worker: its niceness above serve's own (see run_serve)


class _Child:
    """One of `serve`'s children, started again when it exits: after `restart_delay`, or at once
    the first time for the front and the web server (requests wait for them meanwhile)."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        env: Mapping[str, str],
        *,
        pass_fds: tuple[int, ...] = (),
        quick: bool = False,
        nice: int = 0,
    ) -> None:
        self.name, self.cmd, self.env, self.pass_fds, self.quick = name, cmd, env, pass_fds, quick
        self.nice = nice
        self.restarts = 0
        self.restart_at: float | None = None
        self.spawn()

    def spawn(self) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env, pass_fds=self.pass_fds)  # noqa: S603 - our own interpreter and module
        if self.nice:
            # before it has imported anything: from its first job on it yields to the intake; if
            # it is gone already, check() starts it again
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, self.proc.pid, os.getpriority(os.PRIO_PROCESS, 0) + self.nice)
        self.started = time.monotonic()
        self.restart_at = None

    def check(self) -> None:
        if self.restart_at is None:
            if self.proc.poll() is None:
                return
            self.restarts, wait = restart_delay(self.restarts, ran_for=time.monotonic() - self.started)
            if self.quick and self.restarts == 1:
                wait = 0.0
            log.error("%s exited; restarting", self.name, extra={"code": self.proc.returncode, "wait": wait})
            self.restart_at = time.monotonic() + wait
        if time.monotonic() >= self.restart_at:
            self.spawn()

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        try:
            self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ListenError(Exception):
    """An address `serve` cannot listen on; its message is the one line to print."""


def open_listener(address: str, what: str) -> socket.socket:
    """A listening TCP socket on HOST:PORT (`[::1]:8000` for IPv6), made here and inherited by
    the front, so that a restarted front finds the connections that waited meanwhile."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ListenError(f"cannot listen on {address} ({what}): not HOST:PORT with a port from 0 to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, int(port)), family=family, backlog=1024)
    except OSError as exc:
        raise ListenError(f"cannot listen on {address} ({what}): {exc.strerror or exc}") from None


def _announce_operator(operator: socket.socket | None, operator_bind: str) -> None:
    if operator is not None:
        host, port = operator.getsockname()[:2]
        print(f"  operator routes (/readyz, /metrics, /admin): http://{host}:{port}", file=sys.stderr)
    elif operator_bind == "public":
        print("  operator routes (/readyz, /metrics, /admin): on the public address", file=sys.stderr)
    else:
        print("  operator routes (/readyz, /metrics, /admin): off", file=sys.stderr)


def open_listeners(bind: str, operator_bind: str) -> tuple[socket.socket, socket.socket | None]:
    """The public listener on `bind` and the operator routes' (`WEBHOOK_APP_OPERATOR_BIND`: by
    default 127.0.0.1 on the public port + 1; `off` or `public`: none)."""
    public = open_listener(bind, "--bind")
    if operator_bind in ("off", "public"):
        return public, None
    address = operator_bind or f"127.0.0.1:{public.getsockname()[1] + 1}"
    try:
        return public, open_listener(address, "WEBHOOK_APP_OPERATOR_BIND")
    except ListenError:
        public.close()
        raise


def run_serve(
    *, bind: str | None, workers: int | None, env: Mapping[str, str] | None = None, operator_bind: str = ""
) -> int:
    """Run the web server and the job worker as supervised child processes until told to stop,
    each started again if it exits. The listening sockets (`bind` and the operator address) are
    made here and inherited by gunicorn, whose workers buffer each request before the app sees
    it (`webhook_app.front_worker`: slow clients cost a socket, never a worker); connections
    made while gunicorn (re)starts wait in the sockets' backlog."""
    try:
        public, operator = open_listeners(bind or DEFAULT_BIND, operator_bind)
    except ListenError as exc:
        print(f"webhook-app: {exc}", file=sys.stderr)
        return 2
    _announce_operator(operator, operator_bind)
    web_cmd = [sys.executable, "-m", "webhook_app.front_worker", "--listen-fd", str(public.fileno())]
    fds = (public.fileno(),) + ((operator.fileno(),) if operator is not None else ())
    if operator is not None:
        web_cmd += ["--operator-fd", str(operator.fileno())]
    elif operator_bind == "public":
        web_cmd += ["--all-routes"]
    web_cmd += ["--workers", str(workers)] if workers else []
    child_env = dict(os.environ if env is None else env)
    stopping = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    web = _Child("web server", web_cmd, child_env, pass_fds=fds, quick=True)
    # The job worker yields the CPU to the web server (WORKER_NICE): on a host busy with a burst
    # the deliveries are answered first and the jobs drain behind it (they are on disk); on an
    # idle host the niceness changes nothing, so receipt -> PATCH is not delayed.
    worker = _Child("worker", [sys.executable, "-m", "webhook_app", "worker"], child_env, nice=WORKER_NICE)
    try:
        while not stopping.is_set():
            for child in (web, worker):
                child.check()
            stopping.wait(0.1)
    finally:
        for child in (worker, web):  # gunicorn stops accepting and finishes the requests in hand
            child.terminate()
        deadline = time.monotonic() + 35
        for child in (worker, web):
            child.wait(deadline)
        for sock in (public, operator):
            if sock is not None:
                sock.close()
    return 0
