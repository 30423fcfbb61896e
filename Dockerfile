# syntax=docker/dockerfile:1
# edgeqa in a container: the bot with llama.cpp inside, on the CPU.
#
#   docker build -t edgeqa .
#   docker run -d -p 8080:8080 -v edgeqa-data:/data -e EDGEQA_WEB_TOKEN=<long random> edgeqa
#
# The browser chat listens on 0.0.0.0 in here, so it needs EDGEQA_WEB_TOKEN (the bot refuses
# to start without one while the chat is on). /data (a volume) holds the SQLite history and
# the model cache: the model is downloaded there on the first start and reused after.
# See README.md, "Deployment"; docker-compose.yml runs it with PostgreSQL.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: compiles llama-cpp-python (C++) and builds the project, into a venv ------------
FROM ${PYTHON_IMAGE} AS builder
# llama.cpp is compiled for a portable x86-64 (AVX2 class) by default, not for the build
# machine's own CPU; pass --build-arg CMAKE_ARGS="-DGGML_NATIVE=ON" to tune for this host.
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
ARG CMAKE_ARGS="-DGGML_NATIVE=OFF"
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/edgeqa/venv
ENV PATH=/opt/edgeqa/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Its own layer, before the sources: the slow C++ build is redone only for a new version
# (and pip's cache mount keeps the built wheel even then).
RUN --mount=type=cache,target=/root/.cache/pip \
    CMAKE_ARGS="${CMAKE_ARGS}" pip wheel --no-deps --wheel-dir /wheels \
        "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}"
COPY pyproject.toml setup.py README.md /src/
COPY bot /src/bot
COPY adapters /src/adapters
COPY llm /src/llm
COPY storage /src/storage
COPY knowledge /src/knowledge
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels /src \
    && pip install /wheels/*.whl

# --- runtime: the venv, the OpenMP runtime llama.cpp links to, a user without privileges ----
FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libstdc++6 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 edgeqa \
    && useradd --system --uid 10001 --gid edgeqa --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin edgeqa \
    && mkdir -p /data/models \
    && chown -R edgeqa:edgeqa /data
COPY --from=builder /opt/edgeqa/venv /opt/edgeqa/venv
# Settings for the container. The environment wins over an edgeqa.toml (put one in /data
# or pass --config), so change these with `-e`, not in the file.
ENV PATH=/opt/edgeqa/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/data \
    HF_HOME=/data/huggingface \
    EDGEQA_ENGINE__MODEL_DIR=/data/models \
    EDGEQA_HISTORY__DATABASE_URL=sqlite+aiosqlite:////data/edgeqa.db \
    EDGEQA_WEB__HOST=0.0.0.0 \
    EDGEQA_WEB__PORT=8080
WORKDIR /data
VOLUME ["/data"]
USER edgeqa
EXPOSE 8080
# 200 only when the model is loaded and the database answers. The first start may spend
# minutes downloading the model; that is what the long start period is for.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EDGEQA_WEB__PORT', '8080'), timeout=4)"]
# SIGTERM: stop taking questions, finish or cut the answers in flight within
# bot.shutdown_grace (30 s), then exit. Give `docker stop` longer: --time 45 / stop_grace_period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["edgeqa"]
CMD ["run"]
