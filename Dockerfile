# syntax=docker/dockerfile:1
# Build wheels in one stage, run from a slim image without build tools or the wheels themselves.
# The database comes from SYNCSVC_DATABASE_URL: the image does not carry the embedded PostgreSQL.
#
#   docker build -t syncsvc:0.1.0 .
#   docker run --rm -e SYNCSVC_DATABASE_URL=postgresql://... syncsvc:0.1.0 db upgrade
#
# The base is pinned by tag (Python minor + Debian release); pin a digest in your registry if
# your policy asks for byte-for-byte rebuilds.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The build stage compiles the parse's walk (setup.py): the full image has gcc, the slim one not.
ARG BUILD_IMAGE=python:3.11-bookworm

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md setup.py ./
COPY syncsvc ./syncsvc
COPY migrations ./migrations
# Every dependency has a binary wheel for CPython 3.11; syncsvc's own wheel carries the compiled
# walk (same Debian release as the runtime image, so the same glibc). The migrations ship inside the syncsvc wheel as the syncsvc.migrations package. The webhooks
# extra (standardwebhooks) signs webhook consumers' deliveries from `serve`; the queue extra
# (procrastinate, psycopg) runs `syncsvc worker`.
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[webhooks,queue]'

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SYNCSVC_LOG_FORMAT=json
# The wheels are bind-mounted from the build stage, so no layer keeps them. pgserver (the embedded
# PostgreSQL for laptops and tests) is removed: a container must be given SYNCSVC_DATABASE_URL.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels /wheels/syncsvc-*.whl \
        /wheels/standardwebhooks-*.whl /wheels/procrastinate-*.whl /wheels/psycopg-*.whl \
        /wheels/psycopg_binary-*.whl \
    && pip uninstall --yes pgserver \
    && groupadd --gid 10001 syncsvc \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin syncsvc
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 9108
# For `syncsvc serve` (/healthz answers 200 only when the last run finished within its window).
# The slim image has no curl, so Python's own urllib asks; other commands ignore the result.
HEALTHCHECK --interval=60s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SYNCSVC_SERVE_PORT', '9108'), timeout=4)"]
ENTRYPOINT ["syncsvc"]
CMD ["--help"]
