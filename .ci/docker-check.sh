#!/usr/bin/env bash
# Build the CPU and GPU images with podman from an offline base image, run the CPU image on one
# smoke-table row and its upstream (the whole table runs natively earlier in CI) with the shared
# datasets mounted read-only, check that its results reach the mounted results volume, and run
# the GPU image's CLI on the CPU (CI has no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${NETSHRINK_DATA:?set NETSHRINK_DATA to the datasets folder}"

skip() { echo "DOCKER CHECK SKIPPED: $*"; echo "(the images were NOT built or run)"; exit 0; }

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
  else
    skip "podman, runc and debootstrap are missing and cannot be installed here (needs root and apt-get)"
  fi
fi
export CONTAINERS_CONF="$PWD/docker/containers.conf"
podman_() { podman --runtime runc "$@"; }
podman_ info >/dev/null 2>&1 || skip "podman is installed but cannot run here: $(podman --runtime runc info 2>&1 | tail -n 1)"

base=localhost/netshrink-base:bookworm
t=$SECONDS
if podman_ image exists "$base"; then
  echo "offline base $base already present"
else
  bash docker/build-offline-base.sh "$base"
fi
echo "offline base ready in $((SECONDS - t)) s"

for kind in cpu gpu; do
  t=$SECONDS
  podman_ build -q --network=host --build-arg BASE_IMAGE="$base" -f "docker/$kind.Dockerfile" \
    -t "netshrink:$kind" . >/dev/null
  echo "built netshrink:$kind in $((SECONDS - t)) s, $(podman_ image inspect "netshrink:$kind" --format '{{.Size}}' | awk '{printf "%.2f GB", $1/1e9}')"
done

work="$(mktemp -d)"
mkdir -p "$work/results" "$work/runs"
chmod 777 "$work/results" "$work/runs"
t=$SECONDS
podman_ run --rm --network=none -v "$data:/data:ro" -v "$work/results:/results" \
  -v "$work/runs:/runs" netshrink:cpu reproduce --table smoke --profile smoke --device cpu \
  --rows nin-w4a4 --no-progress --results /results --runs /runs
echo "CPU container ran the smoke table's nin-w4a4 row (and its upstream nin-float) in $((SECONDS - t)) s; results in the mounted volume:"
ls "$work/results/smoke"
test -s "$work/results/smoke/nin-float.json" || { echo "no results in the volume" >&2; exit 1; }
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r[k] for k in ('table','row','profile','device','torch')}, r['metrics'])" "$work/results/smoke/nin-float.json"
help_text="$(podman_ run --rm --network=none netshrink:gpu --help)"  # no pipe: podman fails on EPIPE
echo "$help_text"
grep -q "reproduce" <<<"$help_text" || { echo "GPU image: bench --help lacks 'reproduce'" >&2; exit 1; }
echo "GPU image: CLI runs (its training run needs a GPU, which CI does not have)"
rm -rf "$work"
