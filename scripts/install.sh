#!/usr/bin/env bash
# The one install path: the Makefile, .ci/run and both Dockerfiles call this script.
#
#   scripts/install.sh [--venv DIR | --no-venv] [--only "core quant ..."] [--dev] [--no-editable]
#
# --venv DIR      create (if needed) and install into this virtual environment (default: .venv)
# --no-venv       install into the python on PATH (inside a Docker image's own environment)
# --only LIST     install only these packages (names under packages/, or "bench"); default all
# --dev           also install the test tools (pytest, pytest-benchmark, pytest-xdist, ruff)
# --no-editable   install copies instead of editable checkouts (images, release checks)
# Versions come from constraints.txt; the packages themselves only state ranges.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
use_venv=1
only=""
dev=0
editable=1
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv="$2"; shift 2 ;;
    --no-venv) use_venv=0; shift ;;
    --only) only="$2"; shift 2 ;;
    --dev) dev=1; shift ;;
    --no-editable) editable=0; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$use_venv" = 1 ]; then
  if [ ! -x "$venv/bin/python" ]; then
    echo "install.sh: creating virtual environment $venv"
    python3 -m venv "$venv"
  fi
  py="$venv/bin/python"
else
  py="$(command -v python3 || command -v python)"
fi

# Package folders in dependency order: core first, bench (which may import all) last.
all="core"
for d in "$root"/packages/*/; do
  name="$(basename "$d")"
  [ "$name" = core ] || all="$all $name"
done
all="$all bench"
[ -n "$only" ] || only="$all"

args=()
for name in $only; do
  case "$name" in
    bench) dir="$root/benchmarks" ;;
    *) dir="$root/packages/$name" ;;
  esac
  if [ ! -f "$dir/pyproject.toml" ]; then
    echo "install.sh: no package '$name' (looked for $dir/pyproject.toml); known: $all" >&2
    exit 2
  fi
  if [ "$editable" = 1 ]; then args+=(-e "$dir"); else args+=("$dir"); fi
done
# --dev: the test tools, and with prune timm for its zoo tests (prune's [test] extra; not as
# "-e packages/prune[test]": pip 23's resolver then misses the local netshrink-prune for the
# packages listed before it that depend on it, netshrink-auto, and looks it up on the index)
if [ "$dev" = 1 ]; then
  args+=(pytest pytest-benchmark pytest-xdist ruff hypothesis)
  case " $only " in *" prune "*) args+=(timm) ;; esac
fi

export PIP_CONSTRAINT="$root/constraints.txt"   # also pins the build backends pip fetches
"$py" -m pip install --quiet --disable-pip-version-check "${args[@]}"
echo "install.sh: installed [$only]$([ "$dev" = 1 ] && echo ' + test tools') into $("$py" -c 'import sys; print(sys.prefix)')"
# netshrink-kernels compiles its C++ kernels on first use; do it now (cached; ~11 s CPU), so tests
# and benchmarks do not pay for it. Without a compiler this only says so: the package still works.
case " $only " in
  *" kernels "*) "$py" -c 'import netshrink.kernels as k; print("install.sh: kernels",
      k.simd_path() if k.kernels_available() else "not built: " + k.kernels_unavailable_reason())' ;;
esac
