"""`serve`'s gunicorn worker class: the buffering front (front.py) and the Flask app in one process.

Each gunicorn worker runs uvloop's event loop on gunicorn's listeners (inherited from `serve`):
the front accepts, admits and reads every request completely, within its limits and timeouts
(its share of them: `Limits.share`), then the WSGI app runs synchronously on the complete request
in this process (gunicorn's own parser builds the environ from the buffered bytes, gunicorn's
`Response` frames the answer; what its parser refuses is answered as the service's JSON errors and
counted on /metrics) and the answer is written back asynchronously, the connection kept
for the next request when the client asks for it. One HTTP stack per delivery, as under nginx,
where the front process of earlier versions added a second one (BENCHMARKS.md, *`serve`'s front
in the gunicorn worker*).

gunicorn's contract for a worker is kept: the heartbeat (`notify`) from the loop, `alive`
(SIGTERM: stop accepting, finish the requests in hand within `graceful_timeout`), `max_requests`,
the parent's death, and SIGQUIT/SIGINT for a quick exit.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
from typing import Any

from gunicorn import http
from gunicorn.http import wsgi
from gunicorn.workers.base import Worker

from webhook_app import front

#: where the operator routes answer, set by `serve` in gunicorn's master before it forks: the
#: index in gunicorn's listeners of the operator listener, "all" (every route on the public
#: listener) or None (the public listener only)
OPERATOR: int | str | None = None
#: the front's limits for the whole server, set likewise; each worker takes its share
LIMITS: front.Limits | None = None


class _Collected:
    """What gunicorn's `Response` writes, kept for the event loop to send (a socket's `sendall`)."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.parts.append(bytes(data))

    # gunicorn's error answers (a request its parser refuses: 400, 414, 431) are written with
    # `util.write_nonblock`, which asks the socket for its timeout first
    def gettimeout(self) -> float:
        return 0.0

    def setblocking(self, _flag: bool) -> None:
        pass

    def value(self) -> bytes:
        return b"".join(self.parts)


#: what gunicorn's error answers say instead of its message, which quotes the request
_DETAILS = {
    400: "the request could not be parsed",
    414: "the request line is too long",
    431: "the request has too many header fields or one too large",
    500: "the server could not handle the request",
}


def count_answer(status: int) -> None:
    """An answer the front or gunicorn's parser gave before the app saw the request, counted by
    status (`webhook_app_refused_before_the_app_total{code}`): the operator sees on /metrics what
    was turned away before the app. Not with the intake's answers: anyone can send these, and a
    flood of them would otherwise fire the intake's 5xx alert, or hide a real outage under it
    (found by an attacker review)."""
    from webhook_app import metrics  # the app's module: loaded with it, after the metrics directory is set
    from webhook_app.web.intake import counter

    counter(metrics.REFUSED_BEFORE_THE_APP, str(status)).inc()


class JsonRefusals:
    """gunicorn's answer to a request its parser refused (or an app that failed before its
    headers), as the service answers errors elsewhere: `{"errors": [...]}` as JSON, with a fixed
    detail per status instead of gunicorn's HTML page, whose message quotes the request (found by
    an attacker review), and counted (`count_answer`). gunicorn still
    picks the status and logs as it does. For `serve`'s worker class and `web`'s (`sync_worker.py`)."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        page = _Collected()
        super().handle_error(req, page, addr, exc)  # type: ignore[misc]  # gunicorn's Worker, after this in the MRO
        status, _, title = page.value().partition(b"\r\n")[0][9:].decode("latin-1").partition(" ")
        if not status.isdigit():  # gunicorn could not write one
            status, title = "500", "Internal Server Error"
        code = int(status)
        client.sendall(front.error_answer(code, title, _DETAILS.get(code, title.lower())))
        count_answer(code)


class FrontWorker(JsonRefusals, Worker):  # type: ignore[misc]  # gunicorn has no type hints
    """A gunicorn worker that buffers requests on an event loop and runs the WSGI app on each."""

    def init_process(self) -> None:
        self.cfg.set("sendfile", False)  # answers go through the loop, never from a file descriptor
        super().init_process()  # loads the app, then run()

    def listeners(self) -> list[tuple[Any, bool]]:
        out = []
        for i, listener in enumerate(self.sockets):
            operator = OPERATOR == "all" or i == OPERATOR
            out.append((listener.sock, operator))
        return out

    def limits(self) -> front.Limits:
        if LIMITS is not None:
            limits = LIMITS
        else:
            nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            limits = front.Limits(max_body=10 * 1024 * 1024, max_connections=front.connection_budget(0, nofile))
        return limits.share(self.cfg.workers)

    def run(self) -> None:
        loop = front.loop_factory()()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        self._stopped = stopped
        loop.add_signal_handler(signal.SIGTERM, self._graceful)
        for sig in (signal.SIGQUIT, signal.SIGINT):
            loop.add_signal_handler(sig, self._quick, sig)
        heartbeat = loop.create_task(self._heartbeat())
        try:
            await front.serve(
                self.listeners(),
                self.limits(),
                self.respond,
                until=stopped.wait,
                grace=self.cfg.graceful_timeout,
                balance=self.cfg.workers > 1,
                refused=count_answer,
            )
        finally:
            heartbeat.cancel()

    def _graceful(self) -> None:
        self.alive = False
        self._stopped.set()

    def _quick(self, sig: int) -> None:
        self.alive = False
        self.cfg.worker_int(self)
        os._exit(0)  # as gunicorn's own SIGQUIT handler: no waiting for the requests in hand

    async def _heartbeat(self) -> None:
        interval = max(0.1, min(1.0, self.timeout / 2 if self.timeout else 1.0))
        while self.alive:
            self.notify()
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                break
            await asyncio.sleep(interval)
        self._graceful()

    def respond(self, request: front.Request, conn: front.Conn) -> tuple[bytes, bool]:
        """The app's answer to a complete request, and whether the connection stays open."""
        out = _Collected()
        keep = request.keep_alive and self.alive
        req = resp = None
        peer = conn.peer if isinstance(conn.peer, tuple) else ("", -1)
        try:
            req = next(http.get_parser(self.cfg, iter([request.wire(keep_alive=keep)]), peer))
            resp, environ = wsgi.create(req, out, peer, conn.server, self.cfg)
            self.nr += 1
            if self.nr >= self.max_requests:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            if not (keep and self.alive):
                resp.force_close()
            self._run_app(req, resp, environ)
            return out.value(), not resp.should_close()
        except Exception as exc:
            if resp is not None and resp.headers_sent:
                self.log.exception("Error handling request")
                return out.value(), False  # cut short: the client sees the connection end
            out.parts.clear()
            self.handle_error(req, out, peer, exc)  # JsonRefusals: JSON, counted
            return out.value(), False

    def _run_app(self, req: Any, resp: Any, environ: dict[str, Any]) -> None:
        self.cfg.pre_request(self, req)
        respiter = self.wsgi(environ, resp.start_response)
        try:
            for item in respiter:
                resp.write(item)
            resp.close()
        finally:
            if hasattr(respiter, "close"):
                respiter.close()
            self.cfg.post_request(self, req, environ, resp)


def main(argv: list[str] | None = None) -> int:
    """`serve`'s web server (started by `serve`, on the listening sockets it made)."""
    import argparse
    import sys

    from webhook_app.config import Settings
    from webhook_app.errors import ConfigError
    from webhook_app.logs import configure_logging, settings_secrets
    from webhook_app.runtime import run_front_web

    p = argparse.ArgumentParser(prog="python -m webhook_app.front_worker", description="serve's web server")
    p.add_argument("--listen-fd", type=int, required=True, metavar="FD", help="the public listening socket")
    p.add_argument("--operator-fd", type=int, default=None, metavar="FD", help="the operator listening socket")
    p.add_argument("--all-routes", action="store_true", help="serve the operator routes on the public socket too")
    p.add_argument("--workers", type=int, default=None)
    args = p.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"webhook-app: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, secrets=settings_secrets(settings))
    fds = [args.listen_fd] + ([args.operator_fd] if args.operator_fd is not None else [])
    operator: int | str | None = "all" if args.all_routes else (1 if args.operator_fd is not None else None)
    return run_front_web(settings, fds=fds, operator=operator, workers=args.workers)


if __name__ == "__main__":
    raise SystemExit(main())
