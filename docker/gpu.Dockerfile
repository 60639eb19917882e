# netshrink GPU image: as the CPU image, on a CUDA runtime base (torch's wheels bring their own
# CUDA libraries; the base supplies the runtime environment the NVIDIA container toolkit
# expects). Build from the repository root:
#   docker build -f docker/gpu.Dockerfile -t netshrink:gpu .
#   docker run --gpus all ... netshrink:gpu train --device cuda ...
# Offline: --build-arg BASE_IMAGE=netshrink-base:bookworm (docker/build-offline-base.sh).
ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
# Bases without Python get it from their distribution. The CPU and GPU Dockerfiles keep these
# first steps identical, so an engine builds them once when both images share a base.
RUN command -v python3 >/dev/null && python3 -m venv --help >/dev/null 2>&1 \
 || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3 python3-venv python3-pip ca-certificates && rm -rf /var/lib/apt/lists/*)
WORKDIR /opt/netshrink
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
# The default job: every table at the published (full) schedule on the GPU.
CMD ["reproduce", "--table", "all", "--profile", "full", "--device", "cuda", "--download", \
     "--results", "/results", "--runs", "/runs"]
