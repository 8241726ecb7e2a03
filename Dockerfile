# syntax=docker/dockerfile:1.7
# The Library API image: one virtual environment built from uv.lock in a throw-away stage, copied into a slim
# runtime that runs Gunicorn (Uvicorn workers) as an unprivileged user. Build: `docker build -t library-api .`
# See docs/deployment.md for the run-time settings; deploy/gunicorn.conf.py for the process model.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------------------------------------------------------
# Stage 1: resolve and install exactly what uv.lock pins (hashes checked), then the project itself as a wheel.
FROM ${PYTHON_IMAGE} AS builder

ARG UV_VERSION=0.13.9
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install --no-cache-dir "uv==${UV_VERSION}"

WORKDIR /src

# Dependencies first: this layer is reused until pyproject.toml or uv.lock changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-project

# Then the project, installed as a built wheel (not editable), so /src is not needed at run time.
COPY README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable

# ---------------------------------------------------------------------------------------------------------------
# Stage 2: the runtime. No compiler, no uv, no pip cache, no sources: the virtual environment and two files.
FROM ${PYTHON_IMAGE} AS runtime

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

# Liveness only (no dependency is consulted), so a database outage never gets the container restarted.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["python", "/app/healthcheck.py"]

# Gunicorn is PID 1 (exec form, no shell in between): it receives SIGTERM itself and hands it to each worker,
# which drains WebSocket clients and in-flight requests before the process exits.
STOPSIGNAL SIGTERM
CMD ["gunicorn", "--config", "/app/gunicorn.conf.py"]
