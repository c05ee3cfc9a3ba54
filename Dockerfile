#
# imagine-bot image. compose.yaml builds it with the settings in `.env`; by hand:
#   GPU (default): docker build -t imagine-bot:latest .
#   CPU only:      docker build --build-arg TORCH_VARIANT=cpu -t imagine-bot:latest .
#   Ray workers:   docker build --build-arg EXTRAS=ray -t imagine-bot:latest .
#
# Layers, from the bottom: OS and user, torch (changes only with requirements/torch.txt), the other
# dependencies (only with requirements/*.txt), then the project itself (a few hundred kB), so a code or
# README change rebuilds and ships only the top layer. requirements/*.txt pin every version; regenerate them
# with scripts/lock-requirements.sh after changing dependencies in pyproject.toml.
#
# One base for both variants: the PyTorch CUDA wheels bundle their own CUDA runtime, cuDNN and cuBLAS
# (the nvidia-* pip packages), so no nvidia/cuda base image is needed. The host only needs the NVIDIA
# driver plus the NVIDIA Container Toolkit, which mounts the driver into the container at run time
# (`docker run --gpus all`, or compose.gpu.yaml). The cu128 wheels need a driver that supports CUDA 12.8
# (>= 570).
#
# IMAGINE_COMPILE=unet|max (torch.compile) makes Triton/Inductor compile C code at run time, which needs a
# C/C++ compiler the slim image lacks: build with `--build-arg WITH_COMPILER=true` for that (~200 MB more).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE}

ARG WITH_COMPILER=false

# Optional toolchain for torch.compile (see the top of this file). Pinned to Debian bookworm's gcc 12 /
# glibc 2.36; the trailing `*` accepts bookworm's security point releases of libc6-dev.
RUN if [ "$WITH_COMPILER" = "true" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends \
            gcc=4:12.2.0-3 g++=4:12.2.0-3 "libc6-dev=2.36-9+deb12u*" \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# Fixed uid/gid 10001, so that bind-mounted folders can be chowned to it on the host. Its HOME is its own
# writable folder (libraries write caches and config there); ~/.ray is where compose.ray.yaml shares the Ray
# cluster's auth token, created here so that a fresh volume mounted on it belongs to the user.
RUN groupadd --gid 10001 imagine \
    && useradd --no-log-init --uid 10001 --gid imagine --create-home --home-dir /home/imagine \
        --shell /usr/sbin/nologin imagine \
    && install -d -o imagine -g imagine /home/imagine/.ray \
    && mkdir -p /app/data /app/cache/huggingface \
    && chown -R imagine:imagine /app/data /app/cache \
    && python -m venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Torch variant: cpu, cu128 (CUDA 12.8 wheels, default) or any variant the PyTorch index publishes for the
# version pinned in requirements/torch.txt. Behind a mirror or air gap: TORCH_INDEX_URL = your mirror of
# that index, or TORCH_FIND_LINKS = the URL of a folder of wheels (a plain-http host is trusted), which then
# replaces the PyTorch index; PIP_INDEX_URL = your mirror of PyPI, for everything else.
ARG TORCH_VARIANT=cu128
ARG TORCH_INDEX_URL=""
ARG TORCH_FIND_LINKS=""
ARG PIP_INDEX_URL=https://pypi.org/simple

# torch and its own dependencies: the big layer (about 0.9 GB for cpu, several GB for cu128). pip takes the
# best match for the pin from all sources, i.e. the variant's `+cpu` / `+cu128` build; the check below fails
# the build if that was not the variant asked for.
COPY requirements/torch.txt /tmp/requirements/torch.txt
RUN set -eu; \
    if [ -n "$TORCH_FIND_LINKS" ]; then \
        host=${TORCH_FIND_LINKS#*://}; host=${host%%/*}; host=${host%%:*}; \
        set -- --find-links "$TORCH_FIND_LINKS" --trusted-host "$host"; \
    elif [ -z "$TORCH_INDEX_URL" ]; then \
        TORCH_INDEX_URL=https://download.pytorch.org/whl/$TORCH_VARIANT; \
    fi; \
    if [ -n "$TORCH_INDEX_URL" ]; then set -- "$@" --extra-index-url "$TORCH_INDEX_URL"; fi; \
    pip install --no-cache-dir "$@" -r /tmp/requirements/torch.txt; \
    python -W ignore -c "import sys, torch; v = sys.argv[1]; cuda = torch.version.cuda; \
print('torch', torch.__version__, 'cuda', cuda); \
sys.exit(0 if (cuda is None) == (v == 'cpu') else f'torch {torch.__version__} is not the {v} build')" \
        "$TORCH_VARIANT"

# The other dependencies, pinned, plus the optional extras named in EXTRAS (comma-separated, e.g. ray):
# each has its pinned additions in requirements/extra-<name>.txt.
ARG EXTRAS=""
COPY requirements/ /tmp/requirements/
RUN set -eu; \
    IFS=,; \
    for extra in $EXTRAS; do \
        [ -f "/tmp/requirements/extra-$extra.txt" ] \
            || { echo "no requirements/extra-$extra.txt: run scripts/lock-requirements.sh" >&2; exit 1; }; \
        echo "-r extra-$extra.txt" >>/tmp/requirements/runtime.txt; \
    done; \
    pip install --no-cache-dir --requirement /tmp/requirements/runtime.txt; \
    rm -rf /tmp/requirements

# The project: without dependencies (all installed above) and without build isolation (setuptools is
# pinned in requirements/runtime.txt), so this step downloads nothing.
COPY pyproject.toml README.md /tmp/src/
COPY bot/ /tmp/src/bot/
COPY cogs/ /tmp/src/cogs/
RUN pip install --no-cache-dir --no-deps --no-build-isolation /tmp/src \
    && pip check \
    && rm -rf /tmp/src

# IMAGINE_DATA_DIR: history database, generated images, heartbeat file. HF_HOME: downloaded models.
# The compiler caches live in the cache volume too, so a restart with IMAGINE_COMPILE reuses them.
ENV HOME=/home/imagine \
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
