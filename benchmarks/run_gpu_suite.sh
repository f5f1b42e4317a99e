#!/usr/bin/env bash
# The GPU test + benchmark suite for one H100, in one call (about 8 minutes; hard cap ~9.5 minutes).
#
#   OUT=bench_out bash benchmarks/run_gpu_suite.sh
#
# Needs a CUDA GPU and the mamba-ssm / causal-conv1d kernels (`make kernels`). Stages, in this order:
#   tests      the GPU tests (tests/gpu: kernel parity, full DiM-S/2 backend parity, bf16 training steps),
#   profile    where the step's GPU time goes (benchmarks/profile_train.py): DiM-S/2, U-ViT-S/2 at batch 128,
#              DiM-H/2, U-ViT-H/2 at 256 px and batch 64,
#   train_h    DiM-H/2 at 256 and 512: largest training batch with and without activation checkpointing,
#   train_l    DiM-L/2 and U-ViT-H/2 at 256: throughput at batch 64 and at the largest batch that fits,
#   train_s    DiM-S/2 and U-ViT-S/2 on CIFAR-10 shapes (batch 128): eager vs fused AdamW + foreach EMA vs CUDA
#              graphs,
#   compile_s  DiM-S/2 at batch 128: eager vs torch.compile (default mode), with and without fused AdamW + EMA,
#   compile_h  DiM-H/2 at 256 px, batch 64: eager vs torch.compile,
#   compile_ro DiM-S/2 at batch 128 with torch.compile mode reduce-overhead (compile's own CUDA graphs),
#   sampling   time per NFE with CFG, DiM-H/2 vs U-ViT-H/2, 256..2048 px, batch 1 and 8, eager and CUDA graphs,
#   sampler    the product sampler end to end: fp32 vs bf16 vs bf16 + CUDA graphs (benchmarks/bench_sampler.py),
#   mixer      the Mamba mixer alone (benchmarks/bench_mixer.py).
# Largest models first within a stage, small step counts. Every stage has a time limit; the benchmark scripts
# rewrite their JSON after every record, so a stage cut by its limit keeps what it finished. Everything lands in
# $OUT: one JSON per stage, suite.log (the whole console output) and summary.txt (stage, exit code, seconds).
# The whole list takes longer than one 10-minute device call: pass a subset in STAGES per call.
# Environment: OUT (default ./bench_out), PYTHON (default .venv/bin/python, else python), STAGES (space-separated
# subset of the stage names above; default all), ALLOW_TORCH_SCAN=1 to run without the kernels (DiM numbers are
# then meaningless), QUICK=1 for a CPU dry run of the orchestration (tiny models), TRAIN_H_MODELS / TRAIN_H_VARIANTS
# to narrow the memory search (default dim_h2,dim_h2_512 / eager,ckpt), SAMPLING_MODELS / SAMPLING_BATCHES (default
# dim_h2,uvit_h2 / 1,8), SAMPLING_GRAPHS=0 to skip the CUDA-graph replays.
set -u -o pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-./bench_out}"
mkdir -p "$OUT"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
STAGES="${STAGES:-tests profile train_h train_l train_s compile_s compile_h compile_ro sampling sampler mixer}"
LOG="$OUT/suite.log"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
exec > >(tee -a "$LOG") 2>&1

echo "== dimlab GPU suite: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [[ "${QUICK:-0}" == 1 ]]; then
    echo "run_gpu_suite: QUICK=1, CPU dry run with tiny models"
elif ! "$PYTHON" - <<'EOF'
import sys
import torch
from dimlab.models.scan import kernels_available
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device: "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}, kernels: {kernels_available()}")
sys.exit(0 if torch.cuda.is_available() and kernels_available() else 1)
EOF
then
    if [[ "${ALLOW_TORCH_SCAN:-0}" != 1 ]]; then
        echo "run_gpu_suite: needs a CUDA device and the mamba-ssm kernels (make kernels); ALLOW_TORCH_SCAN=1 to force"
        exit 2
    fi
    echo "run_gpu_suite: WARNING: no kernels; DiM runs use the torch scan"
fi

QUICK_ARGS=()
GRAPHS=(--cuda-graphs)
[[ "${SAMPLING_GRAPHS:-1}" == 0 ]] && GRAPHS=()
if [[ "${QUICK:-0}" == 1 ]]; then
    QUICK_ARGS=(--quick --device cpu)
    GRAPHS=()
fi

SUITE_START=$SECONDS
# shellcheck source=benchmarks/stage.sh
source benchmarks/stage.sh

TRAIN=("$PYTHON" benchmarks/bench_train.py "${QUICK_ARGS[@]}")

stage tests 80 "$PYTHON" -m pytest -q -p no:cacheprovider tests/gpu --junitxml="$OUT/gpu_tests.xml"

stage profile 150 "$PYTHON" benchmarks/profile_train.py "${QUICK_ARGS[@]}" --models dim_s2,uvit_s2,dim_h2,uvit_h2 \
    --steps 3 --warmup 3 --out "$OUT/profile.json"

# Memory: largest batch per H100 for DiM-H/2 at 256 and 512, with and without activation checkpointing.
# expandable_segments keeps fragmentation after a caught OOM from shrinking the next probe.
stage train_h 150 env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
    "${TRAIN[@]}" --models "${TRAIN_H_MODELS:-dim_h2,dim_h2_512}" --variants "${TRAIN_H_VARIANTS:-eager,ckpt}" \
    --find-max-batch --max-batch-limit 1024 --steps 2 --warmup 1 --out "$OUT/train_dim_h2_memory.json"

stage train_l 150 env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
    "${TRAIN[@]}" --models dim_l2,uvit_h2 --batch 64 --find-max-batch --max-batch-limit 512 \
    --steps 3 --warmup 1 --out "$OUT/train_large_256.json"

stage train_s 45 "${TRAIN[@]}" --models dim_s2,uvit_s2 --batch 128 \
    --variants eager,fused+foreach_ema,graphs+fused+foreach_ema --steps 15 --warmup 3 \
    --out "$OUT/train_small_cifar.json"

# torch.compile: the eager baseline is re-timed in the same process, so each before/after pair shares everything.
stage compile_s 200 "${TRAIN[@]}" --models dim_s2 --batch 128 \
    --variants eager,compile,fused+foreach_ema,compile+fused+foreach_ema --steps 15 --warmup 3 \
    --out "$OUT/train_small_compile.json"

stage compile_h 200 "${TRAIN[@]}" --models dim_h2 --batch 64 --variants eager,compile --steps 4 --warmup 2 \
    --out "$OUT/train_h2_compile.json"

stage compile_ro 150 "${TRAIN[@]}" --models dim_s2 --batch 128 --variants eager,compile+fused+foreach_ema \
    --compile-mode reduce-overhead --steps 15 --warmup 3 --out "$OUT/train_small_compile_ro.json"

stage sampling 75 "$PYTHON" benchmarks/bench_sampling.py "${QUICK_ARGS[@]}" "${GRAPHS[@]}" --warmup 1 --reps 3 \
    --models "${SAMPLING_MODELS:-dim_h2,uvit_h2}" --batches "${SAMPLING_BATCHES:-1,8}" \
    --max-nfe-seconds 3 --out "$OUT/sampling.json"

stage sampler 120 "$PYTHON" benchmarks/bench_sampler.py "${QUICK_ARGS[@]}" --models dim_h2,uvit_h2 --batches 1,25 \
    --out "$OUT/sampler.json"

stage mixer 30 "$PYTHON" benchmarks/bench_mixer.py "${QUICK_ARGS[@]}" --out "$OUT/bench_mixer.json"

echo
echo "== suite finished in $((SECONDS - SUITE_START))s; stage summary:"
cat "$SUMMARY"
ls -l "$OUT"
