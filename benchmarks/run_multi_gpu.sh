#!/usr/bin/env bash
# The multi-GPU run (issues 10 and 17) in one call on one machine with 2-8 GPUs (about 8 minutes on 8 GPUs).
#
#   OUT=multi_gpu_out bash benchmarks/run_multi_gpu.sh
#   # without an install (dimlab from src/, extra packages in a target folder):
#   OUT=$OUT PYTHON=python3 PYTHONPATH=$PWD/src:/tmp/site bash benchmarks/run_multi_gpu.sh
#
# Runs, in order, each stage under `timeout` (a stage cut by its limit keeps what it finished):
#   env    GPU count and names, `nvidia-smi topo -m`, NCCL version, which scan backends import (the Triton kernels
#          or mamba-ssm's), and the Python packages `python -m dimlab fit` and the FID tests import,
#   tests  pytest -m gpu on the multi-GPU tests: identical DDP replicas after every step over NCCL with bf16-mixed
#          (tests/reliability/test_reliability_ddp.py), FSDP checkpoint + exact resume on 1 and 2 GPUs
#          (test_reliability_fsdp.py), the in-training FID and its rank split (tests/lit/test_fid_callback.py),
#   ddp    benchmarks/bench_ddp.py: $MODEL (default DiM-H/2 at 256 px), $BATCH per GPU (default 96: global 768 on
#          8, the official recipe), bf16-mixed, through lightning.Trainer with strategy ddp on 1, 2, 4 and 8 GPUs
#          (those beyond the visible count are skipped) -> ddp_scaling.json (efficiency = img/s on N GPUs /
#          (N x img/s on 1 GPU)),
#   fsdp   the same model and batch with FSDP (experiments/overlays/fsdp.yaml: FULL_SHARD and SHARD_GRAD_OP) and
#          DDP on all visible GPUs, peak memory per rank -> fsdp.json (FSDP img/s over DDP's),
#   accum  DiM-H/2 at 512 px, the fine-tune recipe's micro-batch ($ACCUM_BATCH, default 15) with gradient
#          accumulation 2, DDP on all visible GPUs -> accum_512.json.
# NVLink multicast stays off in every process: NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and
# NVSHMEM_DISABLE_NVLS=1 are exported for every stage (docs/scaling.md). Everything lands in $OUT: multi_gpu.log
# (the whole console output), multi_gpu_summary.txt (stage, exit code, seconds), the JUnit XML and the JSON. Exit
# code: 0 when every stage passed, 1 when one failed, 2 when the env stage finds fewer than 2 GPUs or no kernel
# backend. Subprocesses (dimlab fit, the benchmark's workers, Lightning's extra ranks) run with this PYTHON
# (`python -m dimlab`, no console script) and inherit PYTHONPATH, to which src/ is prepended here.
# Environment: OUT (default ./multi_gpu_out), PYTHON (default .venv/bin/python, else python3), STAGES
# (space-separated subset of: env tests ddp fsdp accum; default all), MODEL (default dim_h2), BATCH (default 96),
# WARMUP / STEPS (default 5 / 15), SCAN_BACKEND (default auto), ACCUM_BATCH (default 15), ALLOW_TORCH_SCAN=1 to run
# without kernels (DiM numbers are then meaningless), QUICK=1 for a CPU dry run of the orchestration (the GPU tests
# skip; the benchmarks run a tiny model on 2 gloo CPU ranks, FSDP left out).
set -u -o pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-./multi_gpu_out}"
mkdir -p "$OUT"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
STAGES="${STAGES:-env tests ddp fsdp accum}"
MODEL="${MODEL:-dim_h2}"
BATCH="${BATCH:-96}"
WARMUP="${WARMUP:-5}"
STEPS="${STEPS:-15}"
SCAN_BACKEND="${SCAN_BACKEND:-auto}"
ACCUM_BATCH="${ACCUM_BATCH:-15}"
QUICK="${QUICK:-0}"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
LOG="$OUT/multi_gpu.log"
SUMMARY="$OUT/multi_gpu_summary.txt"
: >"$SUMMARY"
exec > >(tee -a "$LOG") 2>&1

echo "== dimlab multi-GPU run: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "PYTHON=$PYTHON PYTHONPATH=$PYTHONPATH QUICK=$QUICK NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE" \
    "TORCH_SYMM_MEM_DISABLE_MULTICAST=$TORCH_SYMM_MEM_DISABLE_MULTICAST NVSHMEM_DISABLE_NVLS=$NVSHMEM_DISABLE_NVLS"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || true
nvidia-smi topo -m || true

SUITE_START=$SECONDS
# shellcheck source=benchmarks/stage.sh
source benchmarks/stage.sh

# Exit 2 (the stage's rc) without 2 GPUs or without a kernel backend (unless QUICK=1 or ALLOW_TORCH_SCAN=1); lists
# missing packages either way.
stage env 60 "$PYTHON" - "$QUICK" "${ALLOW_TORCH_SCAN:-0}" <<'EOF'
import importlib.util
import sys

import torch

quick, allow_torch_scan = sys.argv[1] == "1", sys.argv[2] == "1"
count = torch.cuda.device_count()
names = [torch.cuda.get_device_name(i) for i in range(count)]
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL {torch.cuda.nccl.version() if count else '-'}, "
      f"{count} CUDA devices: {names}")
# What `python -m dimlab fit` (LightningCLI + ShardDataModule), the digits fixture and the FID tests import.
needed = ["dimlab", "lightning", "jsonargparse", "docstring_parser", "typeshed_client", "omegaconf", "webdataset",
          "braceexpand", "yaml", "sklearn", "einops", "diffusers", "torch_fidelity", "triton"]
missing = [m for m in needed if importlib.util.find_spec(m) is None]
print("missing Python packages: " + (", ".join(missing) if missing else "none"))
if "torch_fidelity" in missing:
    print("WARNING: no torch_fidelity: tests/lit/test_fid_callback.py will be skipped")
from dimlab.models.scan import kernels_available

kernels = kernels_available()
print(f"mamba-ssm / causal-conv1d kernels: {kernels}")
if quick:
    print("QUICK=1: CPU dry run, the GPU tests skip and the benchmark uses 2 gloo CPU ranks")
    sys.exit(0)
if count < 2:
    print("run_multi_gpu: needs 2 CUDA devices")
    sys.exit(2)
if not kernels and not allow_torch_scan:
    print("run_multi_gpu: needs Triton or the mamba-ssm kernels; ALLOW_TORCH_SCAN=1 to run without them")
    sys.exit(2)
EOF
env_rc=$?
if [[ " $STAGES " == *" env "* && $env_rc == 2 ]]; then
    echo "run_multi_gpu: stopping (see the env stage above)"
    cat "$SUMMARY"
    exit 2
fi

stage tests 210 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu -rs \
    tests/reliability/test_reliability_ddp.py tests/reliability/test_reliability_fsdp.py \
    tests/lit/test_fid_callback.py --junitxml="$OUT/multi_gpu_tests.xml"

GPUS="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
COMMON=(--warmup "$WARMUP" --steps "$STEPS" --scan-backend "$SCAN_BACKEND")
if [[ "$QUICK" == 1 ]]; then
    COMMON=(--quick --device cpu)
    GPUS=2
fi
DDP_CONFIGS="ddp1,ddp2,ddp4,ddp8"
[[ "$QUICK" == 1 ]] && DDP_CONFIGS="ddp1,ddp2"
stage ddp 300 "$PYTHON" benchmarks/bench_ddp.py --model "$MODEL" --batch "$BATCH" "${COMMON[@]}" \
    --configs "$DDP_CONFIGS" --config-timeout 120 --out "$OUT/ddp_scaling.json"
FSDP_CONFIGS="ddp$GPUS,fsdp-full$GPUS,fsdp-grad$GPUS"
[[ "$QUICK" == 1 ]] && FSDP_CONFIGS="ddp2"  # no FSDP on gloo CPU ranks
stage fsdp 300 "$PYTHON" benchmarks/bench_ddp.py --model "$MODEL" --batch "$BATCH" "${COMMON[@]}" \
    --configs "$FSDP_CONFIGS" --config-timeout 140 --out "$OUT/fsdp.json"
stage accum 200 "$PYTHON" benchmarks/bench_ddp.py --model dim_h2_512 --batch "$ACCUM_BATCH" --accumulate 2 \
    "${COMMON[@]}" --configs "ddp$GPUS" --config-timeout 180 --out "$OUT/accum_512.json"
echo
echo "== finished in $((SECONDS - SUITE_START))s; stage summary (stage, exit code, seconds):"
cat "$SUMMARY"
ls -l "$OUT"
exit "$FAILED"
