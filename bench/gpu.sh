#!/usr/bin/env bash
# The GPU benchmark in one command, run from the offline bundle (`make gpu-bundle`):
#   bash BUNDLE/bench/gpu.sh [--out DIR] [--time-limit SECONDS] [--dry-run] [--corpus DIR]
# Installs nothing outside one temp folder: the bundle's wheels the box's Python lacks go there,
# and so do the corpus, the runs and the compiler caches. Uses the box's own torch. Writes
# gpu-bench.json and gpu-bench.log to --out (default ./gpu-results). PYTHON picks the interpreter
# (default python3). All flags: bench/gpu_bench.py --help.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
[ -f "$ROOT/bundle/manifest.json" ] || { echo "error: $ROOT is not a bundle (run make gpu-bundle)" >&2; exit 2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/stemstream-gpu.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor" TRITON_CACHE_DIR="$WORK/triton" MPLCONFIGDIR="$WORK/mpl"

"$PYTHON" "$ROOT/bench/gpu_install.py" "$ROOT" "$WORK/site" ${STEMSTREAM_BUNDLE_ALL_WHEELS:+--all} \
  > "$WORK/install.json"
export PYTHONPATH="$ROOT:$ROOT/bench/gpu_site:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
export STEMSTREAM_FLUIDSYNTH_LIB="$ROOT/bundle/lib/libfluidsynth.so.3"

"$PYTHON" "$ROOT/bench/gpu_bench.py" --bundle "$ROOT" --work "$WORK" --install "$WORK/install.json" "$@"
