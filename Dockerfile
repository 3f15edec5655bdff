# syntax=docker/dockerfile:1
# Build wheels in one stage, run from a slim image without build tools. The database comes from
# SYNCSVC_DATABASE_URL: the container never starts the embedded PostgreSQL.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY syncsvc ./syncsvc
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 syncsvc
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER syncsvc
ENV SYNCSVC_LOG_FORMAT=json
ENTRYPOINT ["syncsvc"]
CMD ["--help"]
