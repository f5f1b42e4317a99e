#!/usr/bin/env bash
# The 2-GPU part of issue 10 in one call, on one machine with 2 GPUs (about 5 minutes; hard cap about 8).
#
#   OUT=multi_gpu_out bash benchmarks/run_multi_gpu.sh
#   # without an install (dimlab from src/, kernels built into .kernels/site):
#   OUT=$OUT PYTHON=python3 PYTHONPATH=$PWD/src:$PWD/.kernels/site bash benchmarks/run_multi_gpu.sh
#
# Runs, in order, each stage under `timeout` (a stage cut by its limit keeps what it finished):
#   env    what the stages need: 2 CUDA devices, the mamba-ssm kernels, and the Python packages that
#          `python -m dimlab fit` and the FID tests import (missing ones are listed; it does not stop the run),
#   tests  pytest -m gpu on the multi-GPU tests: the DDP replica test over NCCL with bf16-mixed
#          (tests/reliability/test_reliability_ddp.py), FSDP on 1 and 2 GPUs (test_reliability_fsdp.py), the
#          in-training FID on a GPU and its 2-rank split (tests/lit/test_fid_callback.py) -> multi_gpu_tests.xml,
#   ddp    benchmarks/bench_ddp.py: DiM-L/2 at 256 (latents 4x32x32), batch 64 per GPU, bf16-mixed, 10 warmup +
#          30 timed steps through lightning.Trainer with strategy ddp on 1 and 2 GPUs, and without DDP on 1 GPU
#          -> ddp_scaling.json (scaling efficiency = img/s on 2 GPUs / (2 x img/s on 1 GPU)).
# NCCL_NVLS_ENABLE=0 (NVLink multicast off, docs/scaling.md) is exported for every stage. Everything lands in
# $OUT: multi_gpu.log (the whole console output), multi_gpu_summary.txt (stage, exit code, seconds), the JUnit
# XML and the JSON. Exit code: 0 when every stage passed, 1 when one failed, 2 when the env stage finds fewer than
# 2 GPUs or no kernels. Subprocesses (dimlab fit, the benchmark's workers, Lightning's extra ranks) run with this
# PYTHON (`python -m dimlab`, no console script) and inherit PYTHONPATH, to which src/ is prepended here: no
# install is needed.
# Environment: OUT (default ./multi_gpu_out), PYTHON (default .venv/bin/python, else python3), STAGES
# (space-separated subset of: env tests ddp; default all), MODEL (default dim_l2), BATCH (default 64),
# ALLOW_TORCH_SCAN=1 to run without the kernels (DiM numbers are then meaningless), QUICK=1 for a CPU dry run of
# the orchestration (the GPU tests skip; the benchmark runs a tiny model on 2 gloo CPU ranks).
set -u -o pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-./multi_gpu_out}"
mkdir -p "$OUT"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
STAGES="${STAGES:-env tests ddp}"
MODEL="${MODEL:-dim_l2}"
BATCH="${BATCH:-64}"
QUICK="${QUICK:-0}"
export NCCL_NVLS_ENABLE=0
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
LOG="$OUT/multi_gpu.log"
SUMMARY="$OUT/multi_gpu_summary.txt"
: >"$SUMMARY"
exec > >(tee -a "$LOG") 2>&1

echo "== dimlab multi-GPU run: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "PYTHON=$PYTHON PYTHONPATH=$PYTHONPATH NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE QUICK=$QUICK"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || true
nvidia-smi topo -m || true

SUITE_START=$SECONDS
# shellcheck source=benchmarks/stage.sh
source benchmarks/stage.sh

# Exit 2 (the stage's rc) without 2 GPUs or without the kernels (unless QUICK=1 or ALLOW_TORCH_SCAN=1); lists
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
          "braceexpand", "yaml", "sklearn", "einops", "torch_fidelity", "mamba_ssm", "causal_conv1d"]
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
    print("run_multi_gpu: needs the mamba-ssm kernels (make kernels); ALLOW_TORCH_SCAN=1 to run without them")
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

BENCH_ARGS=(--model "$MODEL" --batch "$BATCH" --warmup 10 --steps 30 --configs ddp1,ddp2,single)
if [[ "$QUICK" == 1 ]]; then
    BENCH_ARGS=(--quick --device cpu --model "$MODEL" --configs ddp1,ddp2,single)
fi
stage ddp 240 "$PYTHON" benchmarks/bench_ddp.py "${BENCH_ARGS[@]}" --config-timeout 150 \
    --out "$OUT/ddp_scaling.json"

echo
echo "== finished in $((SECONDS - SUITE_START))s; stage summary (stage, exit code, seconds):"
cat "$SUMMARY"
ls -l "$OUT"
exit "$FAILED"
