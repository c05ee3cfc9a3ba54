# syntax=docker/dockerfile:1
#
# imagine-bot image. Build:
#   GPU (default): docker build -t imagine-bot:latest .
#   CPU only:      docker build --build-arg TORCH_VARIANT=cpu -t imagine-bot:cpu .
#
# One base for both variants: the PyTorch CUDA wheels bundle their own CUDA runtime, cuDNN and cuBLAS
# (the nvidia-* pip packages), so no nvidia/cuda base image is needed. The host only needs the NVIDIA
# driver plus the NVIDIA Container Toolkit, which mounts the driver into the container at run time
# (`docker run --gpus all`, or the device reservation in compose.yaml). The cu128 wheels need a driver
# that supports CUDA 12.8 (>= 570). Builder and runtime must share the same Python (the venv links to
# /usr/local/bin/python), so change PYTHON_IMAGE for both stages at once, if at all.
#
# IMAGINE_COMPILE=unet|max (torch.compile) makes Triton/Inductor compile C code at run time, which needs a
# C/C++ compiler the slim image lacks: build with `--build-arg WITH_COMPILER=true` for that (~200 MB more).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

# cu128 (CUDA 12.8 wheels, default) or cpu; any variant download.pytorch.org publishes for TORCH_VERSION.
ARG TORCH_VARIANT=cu128
ARG TORCH_VERSION=2.9.1

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, in its own layer, from the PyTorch index for the chosen variant (the big download).
RUN pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==${TORCH_VERSION}"

WORKDIR /src

# Then the project's other dependencies, read from pyproject.toml so that editing code reuses this layer.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && python -c "import torch; print('torch', torch.__version__)"

# Finally the project itself (dependencies are already satisfied; torch stays the variant chosen above).
COPY bot/ ./bot/
COPY cogs/ ./cogs/
RUN pip install --no-cache-dir --no-deps /src \
    && pip check


FROM ${PYTHON_IMAGE} AS runtime

ARG WITH_COMPILER=false

# Optional toolchain for torch.compile (see the top of this file). Pinned to Debian bookworm's gcc 12 /
# glibc 2.36; the trailing `*` accepts bookworm's security point releases of libc6-dev.
RUN if [ "$WITH_COMPILER" = "true" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends \
            gcc=4:12.2.0-3 g++=4:12.2.0-3 "libc6-dev=2.36-9+deb12u*" \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# Fixed uid/gid so that bind-mounted data dirs can be chowned to 10001 on the host.
RUN groupadd --gid 10001 imagine \
    && useradd --no-log-init --uid 10001 --gid imagine --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin imagine \
    && mkdir -p /app/data /app/cache/huggingface \
    && chown -R imagine:imagine /app/data /app/cache

COPY --from=builder /opt/venv /opt/venv

# IMAGINE_DATA_DIR: history database, generated images, heartbeat file. HF_HOME: downloaded models.
# The compiler caches live in the cache volume too, so a restart with IMAGINE_COMPILE reuses them.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IMAGINE_DATA_DIR=/app/data \
    HF_HOME=/app/cache/huggingface \
    XDG_CACHE_HOME=/app/cache \
    TRITON_CACHE_DIR=/app/cache/triton \
    TORCHINDUCTOR_CACHE_DIR=/app/cache/torchinductor

WORKDIR /app
# Numeric so that the runtime (and Kubernetes runAsNonRoot) can tell it is not root without /etc/passwd.
USER 10001:10001

# Declared after the chown above so that fresh named volumes start out owned by `imagine`.
VOLUME ["/app/data", "/app/cache"]

# Healthy = a heartbeat younger than 90 s that says connected + the SQLite database passes quick_check.
# The long start period covers the first model download and load (several minutes).
HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 \
    CMD ["python", "-m", "bot", "health"]

ENTRYPOINT ["python", "-m", "bot"]
CMD ["run"]
