# syntax=docker/dockerfile:1
#
# webhook-app image: one image for every process (web, worker, db upgrade, serve).
#
#   docker build -t webhook-app .
#   docker run --rm --read-only --tmpfs /tmp -p 8000:8000 -e CL_WEBHOOK_SECRETS=... webhook-app
#       web (gunicorn with deploy/gunicorn.conf.py) on 0.0.0.0:8000, the default command
#   docker run ... webhook-app worker | db upgrade | serve --bind 0.0.0.0:8000
#
# Two stages: the first builds wheels (the project's and all of its dependencies', with the
# `postgres` extra); the second installs only those wheels into a virtualenv, offline, so no
# compiler, build backend or source tree reaches the final image.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- build: wheels --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps everything else out of the context).
COPY pyproject.toml README.md ./
COPY webhook_app ./webhook_app

# The project's wheel and the wheels of everything `webhook-app[postgres]` needs (psycopg's
# binary wheel, psycopg-pool, Flask, gunicorn, ...). Versions are resolved here, once per build.
RUN pip wheel --wheel-dir /wheels ".[postgres]"

# ---- runtime --------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="webhook-app" \
      org.opencontainers.image.description="Commerce Layer webhook receiver: verified intake, durable log, policy-driven worker" \
      org.opencontainers.image.licenses="MIT"

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only at run time (bytecode was compiled
# at install). PYTHONUNBUFFERED: log lines reach `docker logs` / the kubelet at once.
# The SQLite default (for `serve` on a single host) lives in a volume, not in the app directory;
# compose and Kubernetes set WEBHOOK_APP_DATABASE_URL to PostgreSQL.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    WEBHOOK_APP_DATABASE_URL=sqlite:////var/lib/webhook-app/webhook-app.db

# An unprivileged user with a fixed uid/gid (10001, as in the Kubernetes securityContext), no
# home directory and no login shell.
RUN groupadd --system --gid 10001 webhook \
 && useradd --system --uid 10001 --gid webhook --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin webhook

# Install from the wheels only (--no-index: nothing is downloaded in this stage). The wheels are
# bind-mounted from the build stage, so they are not left in a layer. The virtualenv and the app
# directory belong to root: the app user can read them and write nothing there. pip (and the
# setuptools that venv adds on Python < 3.12) are removed: nothing installs at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv "$VIRTUAL_ENV" \
 && "$VIRTUAL_ENV/bin/pip" install --no-index --find-links=/wheels "webhook-app[postgres]" \
 && "$VIRTUAL_ENV/bin/pip" uninstall --yes pip setuptools \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/webhook-app

# The gunicorn config, where the default command expects it.
COPY deploy/gunicorn.conf.py /app/deploy/gunicorn.conf.py

WORKDIR /app
USER 10001:10001
VOLUME ["/var/lib/webhook-app"]
EXPOSE 8000

# Liveness of the web process only (the worker image runs no HTTP server: compose and Kubernetes
# replace this check for it). Python's urllib, because the slim image has no curl or wget; proxy
# variables are ignored so the check always goes to this container.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/healthz' % (os.environ.get('PORT') or '8000'), timeout=3)"]

# gunicorn and the worker both finish the work in hand on SIGTERM (the exec form makes
# webhook-app PID 1, so it receives the signal itself).
STOPSIGNAL SIGTERM
ENTRYPOINT ["webhook-app"]
CMD ["web", "--config", "/app/deploy/gunicorn.conf.py"]
