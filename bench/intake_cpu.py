"""CPU per delivery of the intake in one process, without HTTP: where the intake's own time goes.

    python bench/intake_cpu.py [--count 2000] [--repeat 5] [--app-dir DIR]

Calls the WSGI application `create_app` builds with real signed 30 KB order bodies (the bench's
own, bench-results/bodies) and reports `time.process_time()` per delivery for:

- `app, no store`: the whole application with the recorder replaced by one that stores nothing
  (what the web worker spends apart from storing);
- `app, SQLite`: the same with the real SQLite store, each delivery committed on its own
  (WEBHOOK_APP_GROUP_COMMIT=false: no writer process in this measurement);
- the pieces of `Delivery.from_http` alone: signature, JSON decode, depth check, identity.

Each figure is the least of `--repeat` runs: on a shared machine the other runs only add time.
`--app-dir` imports webhook_app from another checkout (an A/B of a change, as bench/run.py's);
run the two alternately.

gunicorn's own work (HTTP parsing, the socket) and the kernel's are not in these numbers; the
ingest benchmark's "CPU per request" column has everything.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import bodies as bodies_mod  # noqa: E402


def _environ(signature: str, body: bytes, topic: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/webhooks/commercelayer",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json",
        "HTTP_X_COMMERCELAYER_SIGNATURE": signature,
        "HTTP_X_COMMERCELAYER_TOPIC": topic,
        "HTTP_USER_AGENT": "bench",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=2000, help="deliveries per measurement (after 200 to warm up)")
    p.add_argument("--repeat", type=int, default=5, help="runs of each measurement; the least is reported")
    p.add_argument("--app-dir", type=Path, help="import webhook_app from this checkout (A/B of a change)")
    args = p.parse_args(argv)
    if args.app_dir:  # bench.bodies has imported this checkout's signer: forget it
        sys.path.insert(0, str(args.app_dir.resolve()))
        for name in [m for m in sys.modules if m == "webhook_app" or m.startswith("webhook_app.")]:
            del sys.modules[name]
    found = bodies_mod.ensure_bodies(REPO / "bench-results" / "bodies", "30k", 10_000)
    lines = [ln.rstrip("\n").partition(" ") for ln in Path(found["file"]).read_text().splitlines()]
    n = min(args.count, len(lines) - 200)
    workdir = Path(tempfile.mkdtemp(prefix="webhook-app-intake-cpu-"))
    os.environ.update(
        CL_WEBHOOK_SECRETS=f"bench:{bodies_mod.BENCH_SECRET}",
        WEBHOOK_APP_DATABASE_URL=f"sqlite:///{workdir / 'intake.db'}",
        WEBHOOK_APP_MODE="shadow",
        WEBHOOK_APP_GROUP_COMMIT="false",
        PROMETHEUS_MULTIPROC_DIR=str(workdir),
    )
    from webhook_app.config import Settings
    from webhook_app.events import Delivery, delivery_identity, parse_document, raw_json_depth
    from webhook_app.logs import configure_logging, settings_secrets
    from webhook_app.signing import verify
    from webhook_app.store.base import Recorded
    from webhook_app.web import create_app
    from webhook_app.web.context import EXTENSION

    settings = Settings.from_env()
    real_stderr = sys.stderr
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the log lines are written, as in production, to nowhere
    configure_logging(settings.log_level, secrets=settings_secrets(settings))
    app = create_app(settings)
    services = app.extensions[EXTENSION]
    services.store.migrate()

    class NoStore:
        n = 0

        def record_delivery(self, delivery: Delivery, **_kw: Any) -> Recorded:
            NoStore.n += 1
            return Recorded(NoStore.n, False, NoStore.n, "queued")

    topics = ["orders.place", "orders.approve"]

    def run(offset: int, count: int) -> float:
        def start_response(status: str, _headers: list[tuple[str, str]], _exc: Any = None) -> None:
            assert status.startswith(("200", "202")), status

        envs = [
            _environ(sig, body.encode(), topics[i % 2])
            for i, (sig, _, body) in enumerate(lines[offset : offset + count])
        ]
        started = time.process_time()
        for env in envs:
            for _chunk in app(env, start_response):
                pass
        return (time.process_time() - started) / count * 1e6

    real_recorder = services.recorder
    results: dict[str, float] = {}
    services.recorder = NoStore()
    run(0, 200)
    results["app, no store"] = min(run(200, n) for _ in range(args.repeat))
    services.recorder = real_recorder
    # new bodies for each SQLite run (a duplicate is answered without storing it)
    fresh = range(200, len(lines) - n + 1, n)[: args.repeat]
    results["app, SQLite (one commit per delivery)"] = min(run(offset, n) for offset in fresh)

    sample = [(sig, body.encode()) for sig, _, body in lines[:n]]
    secrets = settings.webhook_secrets

    def each(f: Any) -> float:
        def once() -> float:
            started = time.process_time()
            for sig, body in sample:
                f(sig, body)
            return (time.process_time() - started) / len(sample) * 1e6

        return min(once() for _ in range(args.repeat))

    results["  verify (HMAC-SHA256, base64)"] = each(lambda s, b: verify(b, signature=s, secrets=secrets))
    results["  parse_document (orjson + shape + depth)"] = each(lambda s, b: parse_document(b))
    results["  raw_json_depth alone"] = each(lambda s, b: raw_json_depth(b))
    results["  delivery_identity (SHA-256)"] = each(lambda s, b: delivery_identity("orders.place", b))
    sys.stderr = real_stderr
    import webhook_app

    print(f"webhook_app from {Path(webhook_app.__file__).parent.parent}")
    print(
        f"CPU per delivery, {n} deliveries of {found['mean_bytes']:,} bytes (time.process_time, least of {args.repeat}):"
    )
    for name, us in results.items():
        print(f"  {name:45} {us:7.0f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
