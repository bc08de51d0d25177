# gunicorn settings for webhook-app in production.
#
#   webhook-app web --config deploy/gunicorn.conf.py    (in the image: /app/deploy/gunicorn.conf.py)
#
# Flat on purpose, like warehouse's gunicorn-prod.conf.py: one value per line, each with its reason.
# `webhook-app web` applies the app's own defaults first (webhook_app/runtime.py, GUNICORN_DEFAULTS),
# then this file, then `--bind` / `--workers` from the command line. gunicorn executes this file in
# the master process at start, so reading the environment here is the intended interface.
#
# Slow clients: the sync worker handles one request at a time and is blocked while it reads the
# request or writes the answer. A client that trickles its headers or body (slow-loris) holds a
# worker until `timeout`, and a few such clients take the whole server down. gunicorn alone cannot
# defend against that, so these workers must only ever be reached through a buffering proxy
# (deploy/nginx/webhook-app.conf, or ingress-nginx) that reads the whole request before it opens a
# connection to gunicorn and takes the whole answer at once. The limits below are the second line.

import os

# --- Where to listen --------------------------------------------------------------------------

# PORT is what Procfile platforms set; everything else (compose, k8s, the image) uses 8000. All
# interfaces, because the proxy is in another container or pod; the web port is never published
# directly (compose: internal network only; k8s: ClusterIP Service plus a NetworkPolicy).
bind = [f"0.0.0.0:{os.environ.get('PORT') or '8000'}"]

# --- Worker processes -------------------------------------------------------------------------


def _cpu_count():
    """CPUs this container may use: the cgroup CPU quota if there is one, else the CPU affinity.

    os.cpu_count() would report the host's cores, and a pod limited to 1 CPU on a 64-core node
    would start 129 workers that all get throttled and each hold a database connection.
    """
    quota = period = None
    try:  # cgroup v2
        with open("/sys/fs/cgroup/cpu.max") as f:
            q, p = f.read().split()
        if q != "max":
            quota, period = int(q), int(p)
    except (OSError, ValueError):
        try:  # cgroup v1
            with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
                q1 = int(f.read())
            with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
                p1 = int(f.read())
            if q1 > 0:
                quota, period = q1, p1
        except (OSError, ValueError):
            pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if quota and period:
        cores = min(cores, max(1, -(-quota // period)))  # round a fractional quota up
    return max(1, cores)


def _workers():
    """WEBHOOK_APP_WEB_WORKERS if set, else 2 * CPUs + 1 (gunicorn's rule of thumb), 2 to 8.

    The cap: every worker keeps its own database connection (pool), and a request here is a
    millisecond-long local commit, so more than 8 processes per instance buys nothing but
    PostgreSQL connections. Scale out with more instances instead.
    """
    raw = os.environ.get("WEBHOOK_APP_WEB_WORKERS", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"WEBHOOK_APP_WEB_WORKERS must be a positive integer (got {raw[:20]!r})")
        return int(raw)
    return min(8, max(2, 2 * _cpu_count() + 1))


workers = _workers()

# gunicorn's sync worker (webhook_app/sync_worker.py adds only that its parser's refusals are the
# service's JSON errors, not gunicorn's HTML page): one request per process at a time. Intake is a
# short CPU task (verify the signature, check the document) followed by a wait for the commit
# writer that `webhook-app web` starts beside these workers (docs/explanation/group-commit.md,
# *Group commit*); it never waits on Commerce Layer. A worker waiting for its commit uses no CPU,
# which is why there are more workers than CPUs; a crash or leak stays inside one process. The
# price is the slow-client exposure described at the top: keep nginx in front.
worker_class = "webhook_app.sync_worker.SyncWorker"
threads = 1

# Load the app in each worker after the fork (the default), never in the master: every worker must
# open its own SQLite / PostgreSQL connections, which cannot be shared across fork().
preload_app = False

# Recycle each worker after about 2000 requests, so slow memory growth in a long-lived process is
# bounded; the jitter spreads the restarts so that the workers never all restart together.
max_requests = 2000
max_requests_jitter = 200

# --- Timeouts ---------------------------------------------------------------------------------

# A sync worker that has not reported to the master for `timeout` seconds is killed and replaced.
# The slowest legitimate request is a commit that waits out SQLite's 5 s busy timeout (or
# PostgreSQL's 2 s pool timeout) and then answers 503; 20 s leaves room for that and still frees a
# worker that is stuck (or held by a slow client that got past the proxy) long before its
# neighbours pile up. Commerce Layer itself stops waiting after 5 s, and nginx after 3 s.
timeout = 20

# On SIGTERM (rolling update, scale-in) workers get this long to finish the request in hand.
# Requests last milliseconds, so 20 s is generous; it must stay below the platform's grace period
# (k8s terminationGracePeriodSeconds: 35 s, which also covers a 5 s preStop pause; compose
# stop_grace_period: 30 s).
graceful_timeout = 20

# The sync worker ignores keep-alive: it answers every request with `Connection: close` (gunicorn
# forces it, see gunicorn/workers/sync.py), and nginx opens a fresh upstream connection per
# request (no `keepalive` in its upstream block). The value only matters if someone switches to a
# threaded or async worker behind a load balancer that keeps idle connections open: it must then
# exceed that balancer's idle timeout (60 s on AWS ALB and nginx's upstream keepalive_timeout), or
# gunicorn closes a connection the balancer is about to reuse and the request fails with a 502.
keepalive = 65

# --- Request limits (the second line of defence behind nginx's) --------------------------------

# The only routes are /webhooks/commercelayer, /healthz and /readyz: 4094 bytes of request line is
# ample (gunicorn's default, the same as the app's GUNICORN_DEFAULTS); longer lines get a 400.
limit_request_line = 4094
# Commerce Layer sends about a dozen headers and nginx adds a few; 100 fields is the default cap.
limit_request_fields = 100
# 8190 bytes per header field, the same as nginx's `large_client_header_buffers 4 8k`, so the two
# agree on what is too large.
limit_request_field_size = 8190

# --- Proxy headers ----------------------------------------------------------------------------

# Trust X-Forwarded-* only when the app does. The app honours them through werkzeug's ProxyFix
# when WEBHOOK_APP_FORWARDED_HOPS > 0; gunicorn's own use is the scheme (X-Forwarded-Proto ->
# wsgi.url_scheme). With hops set, the web port is reachable only from the proxy (compose internal
# network; k8s NetworkPolicy), whose address is not fixed, so any peer is trusted ("*");
# FORWARDED_ALLOW_IPS (gunicorn's own variable) narrows it to the proxy's addresses or networks.
# With hops at 0 nobody is trusted: a client cannot make itself look like https.
_hops = os.environ.get("WEBHOOK_APP_FORWARDED_HOPS", "").strip()
_behind_proxy = _hops.isdigit() and int(_hops) > 0
forwarded_allow_ips = (os.environ.get("FORWARDED_ALLOW_IPS") or "*") if _behind_proxy else ""
# Only X-Forwarded-Proto (which nginx always sets itself) decides the scheme. gunicorn's default
# also reads X-Forwarded-Ssl and X-Forwarded-Protocol, and a client-supplied one that disagrees
# would turn every request into a 400.
secure_scheme_headers = {"X-FORWARDED-PROTO": "https"}
# gunicorn would take SCRIPT_NAME and PATH_INFO request headers from a trusted peer; nginx never
# sends them, so a client's would only mount the app (its /metrics, /admin) under another path.
# The app's prefix, if any, comes from X-Forwarded-Prefix through WEBHOOK_APP_FORWARDED_HOPS.
forwarder_headers = ""

# --- Logging ----------------------------------------------------------------------------------

# No access log: the app writes one JSON line per delivery (with request id, topic, order and
# outcome) and nginx logs every request; a third, unstructured line per request is noise.
accesslog = None
# gunicorn's own messages (boot, worker timeouts and restarts) on stderr, warnings and worse only.
errorlog = "-"
loglevel = "warning"
proc_name = "webhook-app-web"

# --- Nothing written outside /tmp and /dev/shm (read-only root filesystem) ---------------------

# Each worker's heartbeat is a temporary file that it fchmod()s every few seconds. On a disk-backed
# or overlay /tmp that call can stall a worker (and the master then kills it); /dev/shm is a
# memory filesystem that is writable even when the root filesystem is read-only (Docker and
# Kubernetes both mount one).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108
# gunicorn >= 25.1 opens a control socket for `gunicornc` under $XDG_RUNTIME_DIR or
# $HOME/.gunicorn; in the image HOME does not exist and the root filesystem is read-only. Nothing
# here needs runtime control (a rollout replaces the process), so it is off. Older gunicorn
# versions ignore the unknown name.
control_socket_disable = True
# No pid file: the process supervisor (Docker, the kubelet, a Procfile runner) tracks the process.
pidfile = None
daemon = False
