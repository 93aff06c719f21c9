# syntax=docker/dockerfile:1
# Stage 1 builds the exporter's wheel from pyproject.toml; the final stage installs it with its
# runtime dependencies (no dev tools) into /opt/venv on a slim Python base.
# Pinned by digest so that a rebuild of the same commit gets the same base; bump it on purpose
# (Dependabot does, see .github/dependabot.yml) with
# `docker buildx imagetools inspect python:3.11-slim-bookworm`.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
# The source revision (git commit), shown by gcore_exporter_build_info{revision}:
# `docker build --build-arg REVISION="$(git rev-parse HEAD)" .` (the release workflow passes it).
ARG REVISION=unknown
# The build date, shown by `--version` and the landing page (the release workflow passes it).
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="gcore-gpu-image-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Gcore Cloud virtual GPU images" \
      org.opencontainers.image.source="https://github.com/gcore-gpu-image-exporter/gcore-gpu-image-exporter" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install /wheels/*.whl
# Bytecode was compiled at install time; nothing is written at run time (read-only root works).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GCORE_EXPORTER_REVISION=${REVISION} \
    GCORE_EXPORTER_BUILD_DATE=${BUILD_DATE}
USER 10001:10001
EXPOSE 10150
# Probes the port of GCORE_EXPORTER_LISTEN's first address (default 10150) without curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('GCORE_EXPORTER_LISTEN', ':10150').split(',')[0].rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
ENTRYPOINT ["gcore-gpu-image-exporter"]
