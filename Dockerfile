# syntax=docker/dockerfile:1
# clipshield serving images (docs/deploy.md). Three targets from one file:
#   serve (default): TorchServe 0.12 + clipshield, non-root, read-only-root friendly (torch without torchvision/
#     open_clip: TorchServe's worker imports torch; clipshield's serving path does not)
#   serve-kserve: KServe's Python model server + clipshield, no torch and no JRE (`pip install .[serve-kserve]`)
#     docker build --target serve-kserve -t registry.example.com/clipshield/serve-kserve:0.1.0-cpu .
#     docker build -t registry.example.com/clipshield/serve:0.1.0-cpu .
#     docker build -t registry.example.com/clipshield/serve:0.1.0-gpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 --build-arg ORT_EXTRA=gpu \
#       --build-arg ORT_PROVIDERS=cuda,cpu .
#   ORT_PROVIDERS becomes CLIPSHIELD_ORT_PROVIDERS (ONNX Runtime execution providers, in order); with the
#   policy `fail` a GPU image whose CUDA provider cannot load refuses the model instead of running on CPU.
#   model: the model store (model_store/clipshield.mar) for the init container
#     docker build --target model -t registry.example.com/clipshield/model:miniworld-0.1.0 .
# Base images are pinned to exact versions; pin them by digest (@sha256:...) in your registry mirror.
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm
ARG BUSYBOX_IMAGE=busybox:1.36.1

# ---- build: a virtual environment with the exact torch, clipshield's serving core and TorchServe ----
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The exact torch. deploy/images/build.sh passes a local CPU wheel's version (e.g. 2.13.0+cpu) only where
# TORCH_INDEX_URL cannot be reached (docs/deploy.md, "Build and run the images without Docker").
ARG TORCH_VERSION=2.14.1
ARG ORT_EXTRA=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install "pip>=24" \
 && /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
# The build context is .dockerignore's allow-list: pyproject.toml, README.md and every package folder (tests/layout.py).
COPY . ./
RUN /opt/venv/bin/pip install ".[${ORT_EXTRA},serve]"

# ---- build-kserve: the lean serving environment, no torch (docs/serving.md "Lean serving install") ----
FROM ${PYTHON_IMAGE} AS build-kserve
ARG ORT_EXTRA=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The build context is .dockerignore's allow-list: pyproject.toml, README.md and every package folder (tests/layout.py).
COPY . ./
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install "pip>=24" \
 && /opt/venv/bin/pip install ".[${ORT_EXTRA},kserve]"

# ---- model: only the model archive; the Deployment's init container copies it out ----
FROM ${BUSYBOX_IMAGE} AS model
COPY --chown=1000:1000 model_store/clipshield.mar /model-store/clipshield.mar
USER 1000:1000

# ---- serve-kserve: KServe runtime image (no torch, no JRE, no compilers, no source tree); k8s/kserve/ ----
FROM ${PYTHON_IMAGE} AS serve-kserve
ARG ORT_PROVIDERS=cpu
RUN groupadd --gid 1000 model-server \
 && useradd --uid 1000 --gid 1000 --home-dir /home/model-server --create-home --shell /usr/sbin/nologin model-server
COPY --from=build-kserve /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CLIPSHIELD_OFFLINE=1 \
    CLIPSHIELD_ORT_PROVIDERS=${ORT_PROVIDERS} \
    CLIPSHIELD_ORT_PROVIDER_POLICY=fail \
    TEMP=/tmp
WORKDIR /home/model-server
USER 1000:1000
EXPOSE 8080
ENTRYPOINT ["python", "-m", "clipshield.handlers.kserve.app"]
CMD ["--bundle", "/mnt/models", "--model-name", "clipshield", "--host-port", "8080"]

# ---- serve: TorchServe runtime image, the default target (no compilers, no pip cache, no source tree) ----
FROM ${PYTHON_IMAGE} AS serve
ARG ORT_PROVIDERS=cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 model-server \
 && useradd --uid 1000 --gid 1000 --home-dir /home/model-server --create-home --shell /usr/sbin/nologin model-server \
 && mkdir -p /home/model-server/model-store /home/model-server/work /home/model-server/logs /etc/clipshield \
 && chown -R 1000:1000 /home/model-server
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CLIPSHIELD_OFFLINE=1 \
    CLIPSHIELD_ORT_PROVIDERS=${ORT_PROVIDERS} \
    CLIPSHIELD_ORT_PROVIDER_POLICY=fail \
    TEMP=/tmp \
    LOG_LOCATION=/home/model-server/logs \
    METRICS_LOCATION=/home/model-server/logs
WORKDIR /home/model-server/work
USER 1000:1000
EXPOSE 8080 8081 8082
# config.properties comes from the ConfigMap (or `-v $PWD/k8s/base/config.properties:/etc/clipshield/config.properties:ro`).
ENTRYPOINT ["torchserve", "--foreground", "--no-config-snapshots"]
CMD ["--ts-config", "/etc/clipshield/config.properties"]
