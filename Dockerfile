# qwen-serve image: libqwen (C) + the Python service, for `serve run` and KubeRay.
#
#   docker build -t qwen-serve .
#   docker run --shm-size=2g -p 8011:8011 -v $PWD/models:/models:ro -e QWEN_API_TOKEN=sk-... qwen-serve
#
# Build stage: `pip install .[serve]` compiles libqwen with CMake (scikit-build-core)
# into a virtualenv. The kernels (scalar / AVX2 / AVX-512) are chosen at run time,
# so the image runs on any x86-64 CPU, not only the one it was built on.
#
# BASE_IMAGE: any Debian bookworm image with `python` (3.10+, with venv) on PATH and apt-get;
# tests/container/run.sh builds a stand-in from Debian packages where Docker Hub is out of reach.
ARG PYTHON_VERSION=3.11
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY native ./native
COPY qwen_serve ./qwen_serve
RUN pip install --upgrade pip \
 && pip install ".[serve]" \
 && cd / && python -c "import qwen_serve.engine._native as n; n.load_library()"

# Runtime stage: the virtualenv only, no compiler. wget is what KubeRay's probes call.
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 --shell /bin/bash ray \
 && mkdir -p /models /weight-cache && chown ray /models /weight-cache
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    QWEN_MODELS_DIR=/models
WORKDIR /app
COPY serve_config.yaml ./
USER 1000
EXPOSE 8011
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD wget -q -O- http://127.0.0.1:8011/health || exit 1
CMD ["serve", "run", "serve_config.yaml"]
