#!/usr/bin/env bash
# The Triton-kernel GPU suite for one GPU: tests, the scan against mamba-ssm, whole-model training and sampling.
#
#   OUT=out STAGES="env warm ktests scan train sampling" bash benchmarks/run_triton_suite.sh
#   OUT=out STAGES="env mixer train_cuda memory profile mtests" bash benchmarks/run_triton_suite.sh
#
# Stages (each under a time limit; the benchmark scripts rewrite their JSON after every record):
#   env        GPU, torch, Triton, which scan backends import
#   warm       compile every Triton kernel the later stages launch, in parallel processes (warm_triton_cache.py)
#   ktests     tests/kernels (the interpreter tests, compiled on the GPU) and tests/gpu/test_triton_gpu.py without
#              the mamba-ssm comparisons (-v: every result is printed when it completes, so a stage cut by its
#              limit still names its failures; the junit report is written only at the end)
#   scan       bench_scan.py: the scan alone, Triton launch configurations ($SCAN_CONFIGS) vs mamba-ssm's kernel
#   pick       pick_scan_config.py on the scan stage's results: the fastest configuration is exported as
#              DIMLAB_SCAN_CONFIG for every later stage (unless DIMLAB_SCAN_CONFIG was set already)
#   train      bench_train.py: DiM-S/2 vs U-ViT-S/2 (batch 128), DiM-H/2 vs U-ViT-H/2 (256 px, batch 64), Triton
#   sampling   bench_sampling.py: DiM-H/2 vs U-ViT-H/2 per NFE with CFG, batch 1 and 8, eager and CUDA graphs
#   mixer      bench_mixer.py: the whole mixer, Triton vs mamba-ssm (needs causal-conv1d too)
#   conv       bench_conv.py: the causal conv1d alone, Triton vs causal-conv1d, against its bytes floor
#   train_cuda bench_train.py: DiM-S/2 and DiM-H/2 with mamba-ssm's kernels, for the side-by-side table
#   train_compile  bench_train.py: DiM-S/2 (eager, torch.compile, CUDA graphs) and DiM-H/2 (eager, compile); the
#              Triton ops are custom ops, so Inductor can fuse the norms, casts, gathers and pointwise work around them
#   ncu        Nsight Compute on the scan and conv kernels at the DiM-S/2 and DiM-H/2 training shapes (ncu_scan.py):
#              registers, occupancy, issue-slot use, warp stall reasons (ncu_*.txt)
#   memory     largest DiM-H/2 batch at 256 and 512 px, eager and activation checkpointing, Triton vs mamba-ssm
#   profile    profile_train.py: where a DiM step's time goes with the Triton kernels
#   profile_sampling  profile_sampling.py: where a guided NFE's time goes, DiM-H/2 and U-ViT-H/2, CUDA graphs
#   sampling_compile  bench_sampling.py and profile_sampling.py with the backbones through torch.compile (and CUDA
#              graphs), 1,024-2,048 px at batch 1, 1,280 / 1,536 px at batch 8: about 30 s of compilation a shape
#   fit_e2e    bench_fit_e2e.py: `dimlab fit` of the DiM-H/2 recipe on synthetic latent shards, against the
#              train stage's bench_train.py figure (train_h2.json)
#   mtests     tests/gpu against mamba-ssm (kernel parity, the bf16 dimlab fit loss curve)
# Environment: OUT (default ./triton_out), PYTHON (default python3), STAGES, SCAN_CONFIGS (';'-separated
# ScanConfig fields for the scan stage), WARM_WORKERS (default 12). NVLink multicast stays off
# (NCCL_NVLS_ENABLE=0). Exit code 0 when every stage passed, 1 otherwise.
set -u -o pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-./triton_out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
STAGES="${STAGES:-env warm ktests scan train sampling}"
# the defaults ("" = ScanConfig()), no prefetching at all (the defaults before 2026-12-03), and neighbours of the defaults
SCAN_CONFIGS="${SCAN_CONFIGS:-;prefetch=0,fwd_prefetch=0;prefetch=6;fwd_prefetch=8;fwd_prefetch_max_warps=64}"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/suite.log") 2>&1
SUITE_START=$SECONDS
# shellcheck source=benchmarks/stage.sh
source benchmarks/stage.sh

stage env 60 "$PYTHON" - <<'EOF'
import torch, triton
from dimlab.models.scan import kernels_available, triton_available
print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, triton "
      f"{triton.__version__}, dimlab triton kernels {triton_available()}, mamba-ssm {kernels_available()}")
EOF

# The jobs: every scan configuration at every bench_scan case, and the fused mixer at the shapes of the train and
# sampling stages (forward batch 2 / 16 = sampling batch 1 / 8 with CFG; 366 / 4494 / 17166 tokens = 256 / 1024 /
# 2048 px; 6894 / 9806 = 1280 / 1536 px).
WARM_JOBS="mixer:512:128:366,mixer:1536:64:366,mixer:1024:64:366"
for length in 366 1230 2606 4494 6894 9806 17166; do
    WARM_JOBS+=",mixer:1536:2:$length:nograd,mixer:1536:16:$length:nograd"
done
IFS=';' read -r -a CONFIG_LIST <<<"$SCAN_CONFIGS"
for case in s2_train l2_train h2_train h2_512_train h2_256_cfg h2_1024_cfg h2_1024_b8_cfg h2_2048_cfg; do
    for config in "${CONFIG_LIST[@]}"; do WARM_JOBS+=",scan:$case:${config//,/+}"; done
done
stage warm 200 "$PYTHON" benchmarks/warm_triton_cache.py --workers "${WARM_WORKERS:-12}" --jobs "$WARM_JOBS"

stage ktests 330 "$PYTHON" -m pytest -v -p no:cacheprovider -n 8 tests/kernels tests/gpu/test_triton_gpu.py \
    -k "not mamba_ssm" --junitxml="$OUT/ktests.xml"

stage scan 150 "$PYTHON" benchmarks/bench_scan.py --configs "$SCAN_CONFIGS" --out "$OUT/scan.json"

stage pick 30 "$PYTHON" benchmarks/pick_scan_config.py "$OUT/scan.json" --write "$OUT/picked_config.txt"
if [[ -z "${DIMLAB_SCAN_CONFIG:-}" && -s "$OUT/picked_config.txt" ]]; then
    DIMLAB_SCAN_CONFIG="$(head -1 "$OUT/picked_config.txt")"
    export DIMLAB_SCAN_CONFIG
fi
echo "DIMLAB_SCAN_CONFIG='${DIMLAB_SCAN_CONFIG:-}' for the stages that follow"

stage train 170 "$PYTHON" benchmarks/bench_train.py --models dim_s2,uvit_s2 --batch 128 --scan-backend triton \
    --steps 10 --warmup 3 --out "$OUT/train_small.json"
stage train 170 "$PYTHON" benchmarks/bench_train.py --models dim_h2,uvit_h2 --batch 64 --scan-backend triton \
    --steps 6 --warmup 2 --out "$OUT/train_h2.json"

stage sampling 150 "$PYTHON" benchmarks/bench_sampling.py --models dim_h2,uvit_h2 --batches 1,8 \
    --resolutions 256,1024,1280,1536,2048 --cuda-graphs --warmup 1 --reps 3 --max-nfe-seconds 3 \
    --out "$OUT/sampling.json"

stage mixer 90 "$PYTHON" benchmarks/bench_mixer.py --backends triton,cuda --out "$OUT/mixer.json"

stage conv 60 "$PYTHON" benchmarks/bench_conv.py --out "$OUT/conv.json"

stage train_cuda 150 "$PYTHON" benchmarks/bench_train.py --models dim_s2 --batch 128 --scan-backend triton,cuda \
    --steps 10 --warmup 3 --out "$OUT/train_small_cuda.json"
stage train_cuda 150 "$PYTHON" benchmarks/bench_train.py --models dim_h2 --batch 64 --scan-backend triton,cuda \
    --steps 6 --warmup 2 --out "$OUT/train_h2_cuda.json"

stage train_compile 240 "$PYTHON" benchmarks/bench_train.py --models dim_s2 --batch 128 --scan-backend triton \
    --variants eager,compile,graphs --steps 10 --warmup 3 --out "$OUT/train_small_compile.json"
stage train_compile 240 "$PYTHON" benchmarks/bench_train.py --models dim_h2 --batch 64 --scan-backend triton \
    --variants eager,compile --steps 6 --warmup 2 --out "$OUT/train_h2_compile.json"

NCU_SECTIONS=(--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats
    --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis
    --section InstructionStats --print-details all)
for case in s2_train h2_train; do
    stage ncu 120 bash -c 'ncu --clock-control none -k "regex:scan_fwd_kernel|scan_bwd_kernel|conv_fwd_kernel|conv_bwd_kernel" \
        -c 8 "${@:4}" "$1" benchmarks/ncu_scan.py --case "$2" >"$3/ncu_$2.txt" 2>&1; rc=$?; tail -3 "$3/ncu_$2.txt"; exit $rc' \
        _ "$PYTHON" "$case" "$OUT" "${NCU_SECTIONS[@]}"
done

stage memory 200 env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "$PYTHON" benchmarks/bench_train.py \
    --models dim_h2,dim_h2_512 --variants eager,ckpt --scan-backend triton,cuda --find-max-batch \
    --max-batch-limit 1024 --steps 2 --warmup 1 --out "$OUT/memory.json"

stage profile 120 "$PYTHON" benchmarks/profile_train.py --models dim_s2,dim_h2 --scan-backend triton --steps 3 \
    --warmup 3 --out "$OUT/profile.json"

stage profile_sampling 150 "$PYTHON" benchmarks/profile_sampling.py --models dim_h2,uvit_h2 --scan-backend triton \
    --resolutions 256,1024,2048 --batches 1,8 --cuda-graphs --out "$OUT/profile_sampling.json"

stage sampling_compile 420 "$PYTHON" benchmarks/bench_sampling.py --models dim_h2,uvit_h2 --batches 1 \
    --resolutions 1024,1280,1536,2048 --cuda-graphs --compile --warmup 1 --reps 3 --max-nfe-seconds 3 \
    --out "$OUT/sampling_compile_b1.json"
stage sampling_compile 300 "$PYTHON" benchmarks/bench_sampling.py --models dim_h2,uvit_h2 --batches 8 \
    --resolutions 1280,1536 --cuda-graphs --compile --warmup 1 --reps 3 --max-nfe-seconds 3 \
    --out "$OUT/sampling_compile_b8.json"
stage sampling_compile 150 "$PYTHON" benchmarks/profile_sampling.py --models dim_h2,uvit_h2 --scan-backend triton \
    --resolutions 1280 --batches 1 --cuda-graphs --compile --out "$OUT/profile_sampling_compile.json"

stage fit_e2e 200 "$PYTHON" benchmarks/bench_fit_e2e.py --steps 40 --batch 64 --workers 8 --compare "$OUT/train_h2.json" \
    --out "$OUT/fit_e2e.json"

stage mtests 200 "$PYTHON" -m pytest -q -p no:cacheprovider tests/gpu/test_triton_gpu.py tests/gpu/test_kernel_parity.py \
    -k "mamba_ssm or auto_picks" --junitxml="$OUT/mtests.xml"

echo
echo "== suite finished in $((SECONDS - SUITE_START)) s; stage summary:"
cat "$SUMMARY"
exit "$FAILED"
