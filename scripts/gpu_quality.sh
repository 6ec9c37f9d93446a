#!/usr/bin/env bash
# The quality study (scripts/quality_study.py, docs/quality.md) on a GPU machine: many small
# learning-budget runs share the card, one process each, the realistic benchmark and the generated
# data side by side. Results land in $OUT/quality.tar.gz (runs.jsonl and baseline.jsonl of each,
# the consoles); `python scripts/quality_study.py --work DIR --summary` prints the tables.
#
# Usage (from the repository root, memseg importable):
#   OUT=/some/dir scripts/gpu_quality.sh
#   STUDY_SECONDS=300 REAL_JOBS=9 SYNTH_JOBS=5 OUT=... scripts/gpu_quality.sh
#   DEVICE=cpu SEEDS=0 TRIALS=defaults STUDY_ARGS="--steps 5" OUT=... scripts/gpu_quality.sh   # dry run
#
# STUDY_SECONDS bounds the study: runs not finished by then are not recorded, and what finished is
# kept (a study rerun on the same work folders skips it). Trials run in the order given below,
# every seed and category of one trial before the next.
set -uo pipefail

OUT="${OUT:-$(pwd)/quality-out}"
WORK="${WORK:-/tmp/memseg-quality}"
PY="${PYTHON:-python3}"
SECONDS_LIMIT="${STUDY_SECONDS:-300}"
SEEDS="${SEEDS:-0 1 2}"
TRIALS="${TRIALS:-defaults nearest_memory nearest_focal_heavy nearest_lr_0.01 nearest_feature_scale_1 \
nearest_large_masks nearest_opaque focal_heavy structure_only opaque}"
DEVICE="${DEVICE:-cuda}"
STUDY_ARGS="${STUDY_ARGS:-}"  # e.g. "--steps 5" for a dry run of this script on a CPU
mkdir -p "$OUT" "$WORK"

# shellcheck disable=SC2086  # SEEDS and TRIALS are word lists
timeout -k 20 -s INT "$SECONDS_LIMIT" "$PY" scripts/quality_study.py --dataset realistic --work "$WORK/realistic" \
  --categories brick grass gravel --seeds $SEEDS --trials $TRIALS \
  --device "$DEVICE" --jobs "${REAL_JOBS:-9}" --threads 1 $STUDY_ARGS > "$WORK/realistic.log" 2>&1 &
real=$!
# shellcheck disable=SC2086
timeout -k 20 -s INT "$SECONDS_LIMIT" "$PY" scripts/quality_study.py --dataset synthetic --work "$WORK/synthetic" \
  --categories carpet bottle --seeds $SEEDS --trials $TRIALS \
  --device "$DEVICE" --jobs "${SYNTH_JOBS:-5}" --threads 1 $STUDY_ARGS > "$WORK/synthetic.log" 2>&1 &
synth=$!
wait "$real"; echo "realistic study exit $?"
wait "$synth"; echo "synthetic study exit $?"
grep -h -E "^\[|FAILED|Error" "$WORK/realistic.log" "$WORK/synthetic.log" | tail -40
wc -l "$WORK"/*/runs.jsonl "$WORK"/*/baseline.jsonl 2>/dev/null
tar -czf "$OUT/quality.tar.gz" -C "$WORK" --exclude='*/train' --exclude='*_seed*' .
ls -la "$OUT"
