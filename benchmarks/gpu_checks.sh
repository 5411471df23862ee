#!/usr/bin/env bash
# Everything only a CUDA GPU can show, in one pass with a time cap per step:
#   1. the kernel tests compiled for real (TRITON_INTERPRET=0): Triton against the PyTorch references,
#      plus the other `gpu`-marked tests (RQ-KMeans, SID index, exact top-k on CUDA);
#   2. end-to-end decode throughput at the paper's serving size (naive vs reference vs Triton), which
#      also runs benchmarks/bench_kernels.py at the same shapes (GB/s and TFLOP/s against the card's peak),
#      and its --count-ops (ops and host syncs per level-step on the Triton path);
#   3. one RQ-KMeans level on the GPU against scikit-learn's Lloyd on the CPU cores, same data.
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
step bench_decode 200 $PY benchmarks/bench_decode.py --device cuda
# Issue 26: launched ops and host syncs per level-step of the Triton path at the paper's size (JSON, last line).
step count_ops 90 $PY benchmarks/bench_decode.py --device cuda --count-ops
step bench_kmeans 120 $PY benchmarks/bench_kmeans.py --device cuda --no-same-init
