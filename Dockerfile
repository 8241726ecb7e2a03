# The Library API image: one virtual environment built from uv.lock in a throw-away stage, copied into a slim
# runtime that runs Gunicorn (Uvicorn workers) as an unprivileged user, on Debian's own Python 3.11.
#
#   docker build -t library-api .
#   docker build --secret id=ca,src=/path/to/ca-bundle.pem -t library-api .   # behind a TLS-inspecting proxy
#
# No `syntax` directive: the daemon's built-in Dockerfile frontend builds this file, so a build needs no
# image registry for it. The base, debian:bookworm-slim, is Docker Hub's official image or the same content
# made from Debian's packages by scripts/base-image.sh. See docs/deployment.md ("The image") for the reasons,
# the run-time settings and the measured sizes and timings; deploy/gunicorn.conf.py for the process model.
#
# The optional `ca` secret is a PEM bundle of the certificate authorities package downloads must trust (a
# TLS-inspecting proxy's CA, or the host's whole bundle that includes it). apt, pip and uv use it for the step
# that downloads and nothing else; it never enters a layer, and without it nothing changes.

ARG BASE_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------------------------
# Stage 1: Debian's Python, shared by the builder and the runtime, so the virtual environment built in one runs
# on exactly the interpreter of the other. ca-certificates and netbase: outgoing TLS (SMTP, Sentry, managed
# PostgreSQL and Redis) and the services/protocols tables, as in the official Python images.
FROM ${BASE_IMAGE} AS python

# Package versions are not pinned: each build takes the release's current security updates, and a pinned
# Debian version disappears from the archive when the next update replaces it.
# hadolint ignore=DL3008
RUN --mount=type=secret,id=ca \
    set -eu; \
    if [ -f /run/secrets/ca ]; then set -- -o Acquire::https::CAInfo=/run/secrets/ca; fi; \
    apt-get "$@" update; \
    apt-get "$@" install -y --no-install-recommends python3 ca-certificates netbase; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt/* /var/log/dpkg.log

# ---------------------------------------------------------------------------------------------------------------
# Stage 2: resolve and install exactly what uv.lock pins (hashes checked), then the project itself as a wheel.
FROM python AS builder

ARG UV_VERSION=0.13.9
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON=/usr/bin/python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# uv itself, in a virtual environment of its own (Debian's Python has no pip outside one).
# hadolint ignore=DL3008
RUN --mount=type=secret,id=ca \
    set -eu; \
    if [ -f /run/secrets/ca ]; then set -- -o Acquire::https::CAInfo=/run/secrets/ca; export PIP_CERT=/run/secrets/ca; fi; \
    apt-get "$@" update; \
    apt-get "$@" install -y --no-install-recommends python3-venv; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -m venv /opt/uv; \
    /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}"

WORKDIR /src

# Dependencies first: this layer is reused until pyproject.toml or uv.lock changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi; \
    /opt/uv/bin/uv sync --locked --no-dev --no-install-project

# Then the project, installed as a built wheel (not editable), so /src is not needed at run time.
COPY README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi; \
    /opt/uv/bin/uv sync --locked --no-dev --no-editable

# ---------------------------------------------------------------------------------------------------------------
# Stage 3: the runtime. No compiler, no uv, no pip, no sources: Python, the virtual environment and two files.
FROM python AS runtime

LABEL org.opencontainers.image.title="library-api" \
      org.opencontainers.image.description="Library service: catalogue, bookings, live events, metrics." \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    PATH=/opt/venv/bin:$PATH \
    ENVIRONMENT=production \
    HOST=0.0.0.0 \
    PORT=8000 \
    UPLOAD_DIR=/app/uploads \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus

# A fixed numeric id, so Kubernetes can check runAsNonRoot and volumes can be prepared for it.
RUN groupadd --system --gid 10001 library \
    && useradd --system --uid 10001 --gid library --home-dir /app --no-create-home --shell /usr/sbin/nologin library \
    && install -d -o library -g library -m 0755 /app /app/uploads \
    && install -d -o library -g library -m 0700 /tmp/prometheus

COPY --from=builder /opt/venv /opt/venv
COPY --chown=root:root --chmod=0644 deploy/gunicorn.conf.py /app/gunicorn.conf.py
COPY --chown=root:root --chmod=0755 deploy/healthcheck.py /app/healthcheck.py

WORKDIR /app
USER 10001:10001
EXPOSE 8000

# Liveness only (no dependency is consulted), so a database outage never gets the container restarted. The probe
# speaks the service's own protocol: plain HTTP, HTTPS, or mutual TLS (see deploy/healthcheck.py).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["python", "/app/healthcheck.py"]

# Gunicorn is PID 1 (exec form, no shell in between): it receives SIGTERM itself and hands it to each worker,
# which drains WebSocket clients and in-flight requests before the process exits.
STOPSIGNAL SIGTERM
CMD ["gunicorn", "--config", "/app/gunicorn.conf.py"]
