# netshrink CPU image: the `bench` CLI with every netshrink package, installed by
# scripts/install.sh (the one install path). Build from the repository root:
#   docker build -f docker/cpu.Dockerfile -t netshrink:cpu .
# Offline: --build-arg BASE_IMAGE=netshrink-base:bookworm (docker/build-offline-base.sh).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
# Bases without Python get it from their distribution. The CPU and GPU Dockerfiles keep these
# first steps identical, so an engine builds them once when both images share a base.
RUN command -v python3 >/dev/null && python3 -m venv --help >/dev/null 2>&1 \
 || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3 python3-venv python3-pip ca-certificates && rm -rf /var/lib/apt/lists/*)
WORKDIR /opt/netshrink
# Dependencies first (a layer that survives source edits), then the packages themselves.
COPY constraints.txt ./
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install -q -c constraints.txt \
      torch torchvision numpy safetensors tensorboard typer rich
COPY scripts ./scripts
COPY packages ./packages
COPY benchmarks ./benchmarks
RUN bash scripts/install.sh --venv /opt/venv --no-editable

RUN (id -u 1000 >/dev/null 2>&1 && userdel --remove "$(id -nu 1000)" || true) \
 && useradd --create-home --uid 1000 netshrink \
 && mkdir -p /data /results /runs && chown netshrink /results /runs
ENV PATH=/opt/venv/bin:$PATH NETSHRINK_DATA=/data
VOLUME ["/data", "/results", "/runs"]
USER netshrink
WORKDIR /home/netshrink
ENTRYPOINT ["bench"]
# The default job is `make reproduce`'s: every table at the quick profile. Results and runs go
# to the volumes; a rerun with the same volumes continues where the last one stopped.
CMD ["reproduce", "--table", "all", "--profile", "quick", "--download", \
     "--results", "/results", "--runs", "/runs"]
