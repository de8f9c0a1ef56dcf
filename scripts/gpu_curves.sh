#!/usr/bin/env bash
# Several learning-curve runs of reports/curves/runs.yaml packed on one GPU, inside a time budget:
#
#   bash scripts/gpu_curves.sh OUT_DIR UNTIL MINUTES RUN [RUN ...]
#
# Each RUN trains in its own `scripts/curves.py train` process, all at once (benchmarks/pack.py
# measures what packing gives), until step UNTIL or until the first evaluation past MINUTES; a run
# killed by the hard limit (MINUTES and 90 s) keeps its last evaluation's checkpoint. Checkpoints live in
# $CTCAE_CURVES_DIR (default ./.devcurves, in .gitignore). A device machine does not keep them
# from one call to the next, even while warm (seen 2026-12-04, the folder then ignored through
# .git/info/exclude), so what continues a run is the checkpoint that comes back: OUT_DIR/RUN.pt,
# each run's checkpoint_last.pt (CHECKPOINTS=0 leaves them out; the device returns at most 8
# files of 16 MiB, which holds four half-width runs).
# Put it at $CTCAE_CURVES_DIR/RUN/checkpoint_last.pt, beside the curve.csv from curves.tgz, and
# the same command continues the run. Out: OUT_DIR/log.txt (progress and nvidia-smi every minute),
# OUT_DIR/curves.tgz (each run's curve.csv and config.json) and OUT_DIR/RUN.pt.
set -u
out=${1:?usage: bash scripts/gpu_curves.sh OUT_DIR UNTIL MINUTES RUN [RUN ...]}
until=${2:?UNTIL}
minutes=${3:?MINUTES}
shift 3
(($# > 0)) || { echo "name at least one run of reports/curves/runs.yaml" >&2; exit 2; }
py=${PYTHON:-python3}
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export CTCAE_CURVES_DIR=${CTCAE_CURVES_DIR:-$PWD/.devcurves}
mkdir -p "$out" "$CTCAE_CURVES_DIR" || exit 2
log=$out/log.txt
hard_s=$(awk -v m="$minutes" 'BEGIN { print int(m * 60 + 90) }')
threads=$(($(nproc) / $#))
((threads < 1)) && threads=1
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    "$py" -c 'import torch; print("torch", torch.__version__, "cudnn.allow_tf32", torch.backends.cudnn.allow_tf32, "matmul.allow_tf32", torch.backends.cuda.matmul.allow_tf32)'
    echo "runs: $* | until $until | $minutes min | $threads threads each | run root $CTCAE_CURVES_DIR"
} >>"$log" 2>&1
pids=()
for run in "$@"; do
    timeout "$hard_s" "$py" scripts/curves.py train "$run" --until "$until" --max-minutes "$minutes" \
        --threads "$threads" --run-root "$CTCAE_CURVES_DIR" >>"$log" 2>&1 &
    pids+=($!)
done
(while sleep 60; do nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader; done) >>"$log" 2>&1 &
watcher=$!
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
pkill -P "$watcher" 2>/dev/null
kill "$watcher" 2>/dev/null
files=()
for run in "$@"; do
    for f in curve.csv config.json; do
        [[ -f $CTCAE_CURVES_DIR/$run/$f ]] && files+=("$run/$f")
    done
    if [[ ${CHECKPOINTS:-1} == 1 && -f $CTCAE_CURVES_DIR/$run/checkpoint_last.pt ]]; then
        cp "$CTCAE_CURVES_DIR/$run/checkpoint_last.pt" "$out/$run.pt"
    fi
done
((${#files[@]})) && tar -czf "$out/curves.tgz" -C "$CTCAE_CURVES_DIR" "${files[@]}"
echo "exit $rc" >>"$log"
grep -E "step [0-9]+:|at step|Error|error" "$log" | tail -n 40
exit $rc
