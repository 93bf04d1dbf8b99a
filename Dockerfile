# syntax=docker/dockerfile:1
# The syncworker image: `docker build -t syncworker .` at the repository root.
#
# Two stages: the first builds a virtual environment from pyproject.toml (pip fetches the
# build backend into an isolated build environment there), the second copies only that
# environment onto a clean slim base, so no compiler, build backend or source tree ships.
# Every dependency (redis/hiredis, pydantic-core, psycopg-binary) has manylinux wheels for
# amd64 and arm64, so the build stage needs no apt-get either.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/syncworker
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY handlers ./handlers
# Extras baked into the image: postgres for the SQL sink. (uvloop, the event loop that
# SYNCWORKER_EVENT_LOOP=auto picks, is a dependency of the package itself.)
ARG EXTRAS=postgres
# A plain (non-editable) install, exactly what tests/deploy/test_entrypoint.py reproduces.
RUN /opt/syncworker/bin/pip install --no-cache-dir ".[${EXTRAS}]"

FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="syncworker" \
      org.opencontainers.image.description="Durable Redis Streams worker with handler plugins" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 syncworker \
    && useradd --system --uid 10001 --gid syncworker --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin syncworker
COPY --from=build /opt/syncworker /opt/syncworker
WORKDIR /app
# The order/payment example's configuration, so deploy/compose.yaml runs on this image alone.
COPY examples ./examples
ENV PATH="/opt/syncworker/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SYNCWORKER_METRICS_HOST=0.0.0.0 \
    SYNCWORKER_METRICS_PORT=9100
USER 10001:10001
EXPOSE 9100
# `python -m worker.ops.healthcheck` reads the same settings as the worker, asks its /healthz and
# exits 0 or 1: no curl needed in a slim image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "worker.ops.healthcheck"]
# SIGTERM starts a graceful drain (stop reading, finish in-flight handlers, ack, exit) within
# SYNCWORKER_SHUTDOWN_TIMEOUT; the exec form makes syncworker PID 1, so the signal reaches it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["syncworker"]
CMD ["run"]
