#!/usr/bin/env bash
# Every GPU figure of benchmarks/README.md in one command on one GPU, inside a time budget:
#
#   bash benchmarks/gpu_figures.sh OUT_DIR [TRAIN_MINUTES [BUDGET_S]]
#
# 1. a smoke run of gpu_check.py at its tiny sizes on the GPU; the script stops here if the CUDA
#    path breaks, so a broken build costs seconds, not the budget;
# 2. gpu_check.py: step time and peak memory of CAE, CAE++, CtCAE (paper profile, batch 64), then
#    ctcae_tetrominoes trained for TRAIN_MINUTES (default 6) and evaluated;
# 3. pack.py: trials per GPU-hour packed 1, 2, 4 and 8 to the GPU, paper CtCAE (batch 64, 50,000
#    steps a trial) and _small CtCAE (batch 32, 3,000 steps a trial, as ablations/paper_small.yaml);
# 4. step.py with bf16 autocast, if time is left.
# Each step gets the time left before BUDGET_S (default 590) and is cut there; what finished is
# kept. Out: OUT_DIR/env.txt, OUT_DIR/results.jsonl (every JSON line), OUT_DIR/log.txt (progress).
set -u
out=${1:?usage: bash benchmarks/gpu_figures.sh OUT_DIR [TRAIN_MINUTES [BUDGET_S]]}
minutes=${2:-6}
budget=${3:-590}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}  # DEVICE=cpu checks the script itself
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$out" || exit 2
export PYTHONUNBUFFERED=1
results=$out/results.jsonl
log=$out/log.txt
: >"$results"
: >"$log"

left() { echo $((budget - SECONDS)); }

step() {  # step NAME SECONDS_WANTED COMMAND...: run with the smaller of the wish and the time left
    local name=$1 want=$2 t
    shift 2
    t=$(left)
    ((t < want)) && want=$t
    if ((want < 20)); then
        echo "== $name: skipped, ${t} s left" | tee -a "$log"
        return 1
    fi
    echo "== $name (up to ${want} s, ${SECONDS} s in)" | tee -a "$log"
    timeout "$want" "$@" >>"$results" 2>>"$log"
    local rc=$?
    echo "== $name: exit $rc at ${SECONDS} s" | tee -a "$log"
    return $rc
}

{
    nvidia-smi
    "$py" -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")'
    nproc
} >"$out/env.txt" 2>&1
tail -n 3 "$out/env.txt"

if ! step smoke 150 "$py" benchmarks/gpu_check.py --dry-run --device "$device"; then
    tail -n 60 "$log"
    exit 1
fi
step gpu_check $((minutes * 60 + 150)) "$py" benchmarks/gpu_check.py --device "$device" --train-minutes "$minutes"
step pack_paper 120 "$py" benchmarks/pack.py --device "$device" --profile ctcae_tetrominoes --packs 1 2 4 8 --seconds 6
step pack_small 110 "$py" benchmarks/pack.py --device "$device" --profile ctcae_tetrominoes_small --batch-size 32 --trial-steps 3000 \
    --packs 1 2 4 8 --seconds 6
step step_bf16 90 "$py" benchmarks/step.py --device "$device" --precision bf16 --repeats 20
tail -n 30 "$log"
cat "$results"
