#!/usr/bin/env bash
# Everything only a CUDA GPU can show, in one pass with a time cap per step:
#   1. the kernel tests compiled for real (TRITON_INTERPRET=0): Triton against the PyTorch references,
#      plus the other `gpu`-marked tests (RQ-KMeans, SID index, exact top-k on CUDA);
#   2. end-to-end decode throughput at the paper's serving size (naive vs reference vs Triton), which
#      also runs benchmarks/bench_kernels.py at the same shapes (GB/s and TFLOP/s against the card's peak),
#      and its --count-ops (ops and host syncs per level-step on the Triton path);
#   3. GRank's ranker scoring k1 = 1,000 candidates per user (fp16, the paper's serving precision, and
#      fp32), against the generator's own work in the same run (issue 23's latency on a GPU);
#   4. DualGR's training step at the paper's size (configs/dualgr_paper.yaml on synthetic:200000x500000):
#      step time, targets/s, peak memory and MFU (issue 22's paper-scale path on a GPU);
#   5. one RQ-KMeans level on the GPU against scikit-learn's Lloyd on the CPU cores, same data.
# Steps run in the order of what they still have to show: the new measurements (3, 4) before the
# re-measurements (2's decode rows, 5), so a short budget drops the ones a log already holds.
# Run from the repository root with genret installed: `bash benchmarks/gpu_checks.sh [LOG_DIR]`.
# Each step's output goes to the terminal and to LOG_DIR/<step>.log (default runs/gpu_checks).
set -u
LOG_DIR=${1:-runs/gpu_checks}
BUDGET_S=${GPU_CHECKS_BUDGET_S:-480}  # the whole script; a step gets min(its cap, what is left)
mkdir -p "$LOG_DIR"
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
start=$(date +%s)
PY=${PYTHON:-python3}
# The pytest script next to the interpreter, not `python -m pytest`: -m would put the repository root
# first on sys.path, where the top-level tokenizers/ folder shadows Hugging Face's `tokenizers`.
PYTEST=$(dirname "$(command -v "$PY")")/pytest

step() {  # step NAME CAP_SECONDS COMMAND...
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET_S - ($(date +%s) - start)))
    if ((left < 20)); then
        echo "== $name: skipped, only ${left}s of the ${BUDGET_S}s budget left" | tee "$LOG_DIR/$name.log"
        return
    fi
    ((cap > left)) && cap=$left
    echo "== $name (cap ${cap}s): $*"
    local t0=$(date +%s)
    timeout "$cap" "$@" 2>&1 | tee "$LOG_DIR/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $(($(date +%s) - t0))s" | tee -a "$LOG_DIR/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOG_DIR/device.log"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$LOG_DIR/device.log"

step kernel_tests 200 "$PYTEST" -q -rfEs -p no:cacheprovider -m "kernels or gpu" tests
step bench_ranker_fp16 60 $PY benchmarks/bench_ranker.py --device cuda --dtype fp16
step bench_ranker_fp32 60 $PY benchmarks/bench_ranker.py --device cuda --dtype fp32
# Set-up (500,000 items through RQ-KMeans 3 x 8192, 2 iterations: speed does not depend on them)
# takes about a minute on 16 cores; then 5 untimed and 20 timed steps at the config's batch (128 users).
step paper_train 240 $PY benchmarks/bench_paper_train.py --steps 20 --warmup 5 --cache_dir "$LOG_DIR/cache" \
    --json "$LOG_DIR/paper_train.json"
step bench_decode 200 $PY benchmarks/bench_decode.py --device cuda
# Issue 26: launched ops and host syncs per level-step of the Triton path at the paper's size (JSON, last line).
step count_ops 90 $PY benchmarks/bench_decode.py --device cuda --count-ops
step bench_kmeans 120 $PY benchmarks/bench_kmeans.py --device cuda --no-same-init
