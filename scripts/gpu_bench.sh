#!/usr/bin/env bash
# Run `memseg bench` on a GPU machine and leave the figures in $OUT (docs/performance.md, "GPU run").
#
# Usage (from the repository root):
#   OUT=/some/dir scripts/gpu_bench.sh                 # installs if needed, then benches
#   WHEELS=/path/to/wheels OUT=... scripts/gpu_bench.sh  # machine without a package index
#   OUT=... scripts/gpu_bench.sh --skip-sweep          # no Ray on the machine: leave the sweep section out
#
# Install order: nothing when `import memseg` already works; otherwise from the wheels in $WHEELS
# (default: ./wheels or ./shared/wheels when present) with --no-index; otherwise from the index.
# Make the wheels on a machine with an index and the GPU machine's Python/platform:
#   pip wheel --wheel-dir wheels . && pip download --dest wheels -r <(pip freeze --exclude-editable)
#
# Outputs in $OUT: bench_cuda.json (the figures), bench_cuda.txt (the table), env.txt
# (nvidia-smi, pip freeze), bench_cuda.log (stderr).
set -euo pipefail

OUT="${OUT:-$(pwd)/bench-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"

if ! "$PY" -c "import memseg, torch" 2>/dev/null; then
  WHEELS="${WHEELS:-}"
  if [[ -z "$WHEELS" ]]; then
    for d in wheels shared/wheels; do [[ -d "$d" ]] && WHEELS="$d" && break; done
  fi
  if [[ -n "$WHEELS" ]]; then
    echo "installing memseg from the wheels in $WHEELS (no index)"
    "$PY" -m pip install --no-index --find-links "$WHEELS" -e .
  else
    echo "installing memseg from the package index"
    "$PY" -m pip install -e .
  fi
fi

{
  echo "# $(date -u +%FT%TZ) $(git rev-parse HEAD 2>/dev/null || echo no-git)"
  nvidia-smi || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  "$PY" -m pip freeze 2>/dev/null | grep -i -E '^(torch|timm|numpy|opencv|ray|mlflow)' || true
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'CUDA is not available to torch on this machine')"

# The CPU count of the machine is the trial's CPUs here; the DataLoader figure uses all of them.
# `python -m pipelines.cli` = `memseg`, also where the package is on PYTHONPATH rather than installed.
"$PY" -m pipelines.cli bench --device cuda --size 256 --json "$OUT/bench_cuda.json" "$@" \
  > "$OUT/bench_cuda.txt" 2> "$OUT/bench_cuda.log" || status=$?
cat "$OUT/bench_cuda.txt"
exit "${status:-0}"
