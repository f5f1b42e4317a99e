#!/usr/bin/env bash
# Build mamba-ssm and causal-conv1d CUDA wheels for THIS machine's GPU architecture only, then install them.
#
# Why: both packages' setup.py hard-code a -gencode list (sm_75, 80, 87, 90, and 100/120/103/110/121 with
# newer nvcc), and torch's BuildExtension adds the TORCH_CUDA_ARCH_LIST archs on top. Compiling every arch
# is what makes `pip install mamba-ssm` take an hour or more (mamba#302, #484). We unpack each sdist into a
# temporary folder, replace the hard-coded -gencode appends with `pass` (sed), and let torch add exactly one
# arch through TORCH_CUDA_ARCH_LIST. See docs/kernels.md.
#
# Settings (environment variables):
#   KERNEL_SDIST_DIR  folder holding mamba_ssm-<v>.tar.gz and causal_conv1d-<v>.tar.gz (default: .kernels);
#                     when both are there nothing is downloaded, else pip downloads them into it
#   WHEEL_DIR         where the wheels go (default: $KERNEL_SDIST_DIR/wheels)
#   MAX_JOBS          parallel compile jobs PER PACKAGE; both packages build at once (default: nproc / 2)
#   KERNEL_ARCH       compute capability to build for, e.g. 9.0; default: read from the local GPU via torch
#   PYTHON            interpreter whose torch the kernels are built against (default: .venv/bin/python, else python3)
#   INSTALL           1 (default) installs the wheels with `pip install --no-deps`; 0 only builds them
#   PIP_TARGET        install into this folder (pip --target) instead of the interpreter's site-packages
#   KERNEL_BUILD_DIR  where the patched sources are unpacked and compiled (default: a temporary folder,
#                     removed at the end). Give a folder to keep the object files: a rerun after an
#                     interrupted build then reuses them (ninja only rebuilds what is missing)
#   KERNEL_PACKAGES   which to build: "mamba-ssm causal-conv1d" (default), or one of them (e.g. when a
#                     prebuilt wheel of the other is at hand); only the named sdists are needed
set -euo pipefail

MAMBA_VERSION=2.3.2.post1
CONV_VERSION=1.7.0

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
KERNEL_SDIST_DIR="$(mkdir -p "${KERNEL_SDIST_DIR:-$ROOT/.kernels}" && cd "${KERNEL_SDIST_DIR:-$ROOT/.kernels}" && pwd)"
WHEEL_DIR="${WHEEL_DIR:-$KERNEL_SDIST_DIR/wheels}"
mkdir -p "$WHEEL_DIR"
WHEEL_DIR="$(cd "$WHEEL_DIR" && pwd)"
NPROC="$(nproc 2>/dev/null || echo 2)"
MAX_JOBS="${MAX_JOBS:-$(( NPROC / 2 > 0 ? NPROC / 2 : 1 ))}"
INSTALL="${INSTALL:-1}"
KERNEL_PACKAGES="${KERNEL_PACKAGES:-mamba-ssm causal-conv1d}"
want() { [[ " $KERNEL_PACKAGES " == *" $1 "* ]]; }
for pkg in $KERNEL_PACKAGES; do
    [[ "$pkg" == mamba-ssm || "$pkg" == causal-conv1d ]] || { echo "build_kernels: error: KERNEL_PACKAGES: unknown package '$pkg' (mamba-ssm, causal-conv1d)" >&2; exit 1; }
done

die() { echo "build_kernels: error: $*" >&2; exit 1; }
say() { echo "build_kernels: $*"; }

# ---------------------------------------------------------------------------------------------- checks
"$PYTHON" -c "import torch" 2>/dev/null || die "$PYTHON cannot import torch; run 'make install' first or set PYTHON"
TORCH_INFO="$("$PYTHON" -c 'import torch; print(torch.__version__, torch.version.cuda or "none")')"
say "torch ${TORCH_INFO% *} (CUDA ${TORCH_INFO#* }) from $PYTHON"
[[ "${TORCH_INFO#* }" != "none" ]] || die "this torch is a CPU-only build; the kernels need a CUDA build of torch"

if [[ -z "${KERNEL_ARCH:-}" ]]; then
    KERNEL_ARCH="$("$PYTHON" -c 'import torch
if not torch.cuda.is_available():
    raise SystemExit(1)
print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null)" \
        || die "no CUDA GPU visible to torch, so the local GPU arch is unknown. Run this on the GPU machine, or set KERNEL_ARCH (e.g. KERNEL_ARCH=9.0 for H100/H200) to build for a named arch"
fi
[[ "$KERNEL_ARCH" =~ ^[0-9]+\.[0-9]+a?$ ]] || die "KERNEL_ARCH must look like 9.0 (or 9.0a), got '$KERNEL_ARCH'"
say "building for compute capability $KERNEL_ARCH only"

NVCC="${CUDA_HOME:+$CUDA_HOME/bin/nvcc}"
[[ -n "$NVCC" && -x "$NVCC" ]] || NVCC="$(command -v nvcc || true)"
[[ -n "$NVCC" && -x "$NVCC" ]] || die "nvcc not found (set CUDA_HOME or put nvcc on PATH); a CUDA toolkit >= 11.6 is needed"
export CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$NVCC")")")}"
say "nvcc: $("$NVCC" --version | grep -o 'release [0-9.]*' || echo unknown) at $NVCC"

for module in setuptools wheel packaging; do
    "$PYTHON" -c "import $module" 2>/dev/null || die "python module '$module' is missing ($PYTHON -m pip install $module); --no-build-isolation needs it"
done
command -v ninja >/dev/null || "$PYTHON" -c "import ninja" 2>/dev/null \
    || say "warning: ninja not found: torch falls back to a slow serial build and ignores MAX_JOBS"

# ---------------------------------------------------------------------------------------------- sources
MAMBA_SDIST="$KERNEL_SDIST_DIR/mamba_ssm-$MAMBA_VERSION.tar.gz"
CONV_SDIST="$KERNEL_SDIST_DIR/causal_conv1d-$CONV_VERSION.tar.gz"
SDISTS=() REQUIREMENTS=()
want mamba-ssm && SDISTS+=("$MAMBA_SDIST") && REQUIREMENTS+=("mamba-ssm==$MAMBA_VERSION")
want causal-conv1d && SDISTS+=("$CONV_SDIST") && REQUIREMENTS+=("causal-conv1d==$CONV_VERSION")
MISSING=0
for sdist in "${SDISTS[@]}"; do [[ -f "$sdist" ]] || MISSING=1; done
if [[ $MISSING == 1 ]]; then
    say "downloading the sdists into $KERNEL_SDIST_DIR"
    # the SKIP flags stop pip's metadata step from compiling anything
    MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE "$PYTHON" -m pip download --no-deps \
        --no-build-isolation --no-binary :all: -d "$KERNEL_SDIST_DIR" "${REQUIREMENTS[@]}" \
        || die "could not download the sdists; put ${SDISTS[*]##*/} in KERNEL_SDIST_DIR"
fi

if [[ -n "${KERNEL_BUILD_DIR:-}" ]]; then
    mkdir -p "$KERNEL_BUILD_DIR"
    WORK="$(cd "$KERNEL_BUILD_DIR" && pwd)"
else
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/dimlab-kernels.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
fi
for sdist in "${SDISTS[@]}"; do
    unpacked="$WORK/$(basename "$sdist" .tar.gz)"
    if [[ -f "$unpacked/.dimlab-patched" ]]; then
        say "reusing $unpacked (and any object files already compiled there)"
    else
        rm -rf "$unpacked"
        tar -xzf "$sdist" -C "$WORK"
    fi
done

# Keep only the local arch: neutralise every hard-coded -gencode append (a `pass` keeps the `if` blocks
# valid Python); torch then adds -gencode for TORCH_CUDA_ARCH_LIST alone.
patch_setup() {
    local setup="$1"
    sed -i -E \
        -e 's/cc_flag\.append\("-gencode"\)/pass  # dimlab: arch list cut to TORCH_CUDA_ARCH_LIST/' \
        -e 's/cc_flag\.append\("arch=compute_[0-9a-z]+,code=sm_[0-9a-z]+"\)/pass  # dimlab: arch list cut/' \
        "$setup"
    if grep -n 'arch=compute_' "$setup"; then
        die "$setup still names architectures after patching (the sdist changed?); see docs/kernels.md"
    fi
    "$PYTHON" -c "import ast, sys; ast.parse(open(sys.argv[1]).read())" "$setup" || die "patched $setup is not valid Python"
    touch "$(dirname "$setup")/.dimlab-patched"
}
for sdist in "${SDISTS[@]}"; do
    src="$WORK/$(basename "$sdist" .tar.gz)"
    [[ -f "$src/.dimlab-patched" ]] || patch_setup "$src/setup.py"
done

# ---------------------------------------------------------------------------------------------- build
build() {  # name source_dir log
    local name="$1" src="$2" log="$3" start=$SECONDS
    if TORCH_CUDA_ARCH_LIST="$KERNEL_ARCH" MAX_JOBS="$MAX_JOBS" \
        MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE \
        MAMBA_SKIP_CUDA_BUILD=FALSE CAUSAL_CONV1D_SKIP_CUDA_BUILD=FALSE \
        "$PYTHON" -m pip wheel --no-build-isolation --no-deps -v -w "$WHEEL_DIR" "$src" >"$log" 2>&1; then
        echo "build_kernels: $name built in $(( SECONDS - start )) s"
    else
        echo "build_kernels: $name FAILED after $(( SECONDS - start )) s; last lines of $log:" >&2
        tail -n 40 "$log" >&2
        return 1
    fi
}

kill_tree() {  # stop a background build and everything it started (pip, ninja, nvcc), children first
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$child"; done
    kill "$1" 2>/dev/null || true
}
stop_builds() {
    echo "build_kernels: interrupted; stopping the builds (compiled objects stay in KERNEL_BUILD_DIR, if set)" >&2
    kill_tree "${CONV_PID:-0}"
    kill_tree "${MAMBA_PID:-0}"
    exit 130
}
trap stop_builds INT TERM

say "building $KERNEL_PACKAGES in parallel, MAX_JOBS=$MAX_JOBS each; logs in $WHEEL_DIR/*.log"
TOTAL_START=$SECONDS
if want causal-conv1d; then
    build "causal-conv1d $CONV_VERSION" "$WORK/causal_conv1d-$CONV_VERSION" "$WHEEL_DIR/causal_conv1d.log" &
    CONV_PID=$!
fi
if want mamba-ssm; then
    build "mamba-ssm $MAMBA_VERSION" "$WORK/mamba_ssm-$MAMBA_VERSION" "$WHEEL_DIR/mamba_ssm.log" &
    MAMBA_PID=$!
fi
FAILED=0
[[ -z "${CONV_PID:-}" ]] || wait "$CONV_PID" || FAILED=1
[[ -z "${MAMBA_PID:-}" ]] || wait "$MAMBA_PID" || FAILED=1
[[ $FAILED == 0 ]] || die "a build failed (see above)"
say "built in $(( SECONDS - TOTAL_START )) s"

WHEELS=()
want causal-conv1d && WHEELS+=("$(ls -t "$WHEEL_DIR"/causal_conv1d-"$CONV_VERSION"-*.whl | head -n 1)")
want mamba-ssm && WHEELS+=("$(ls -t "$WHEEL_DIR"/mamba_ssm-"$MAMBA_VERSION"-*.whl | head -n 1)")
say "wheels: ${WHEELS[*]}"

# ---------------------------------------------------------------------------------------------- install
if [[ "$INSTALL" == "1" ]]; then
    # --no-deps: the runtime needs (einops, triton, transformers, ...) come with torch / dimlab or are
    # reported below; pip would otherwise try to resolve mamba-ssm's optional extras over the network.
    "$PYTHON" -m pip install --no-deps --force-reinstall ${PIP_TARGET:+--target "$PIP_TARGET"} "${WHEELS[@]}"
    # torch first: the extensions link against libc10.so, which importing torch loads
    if PYTHONPATH="${PIP_TARGET:+$PIP_TARGET:}${PYTHONPATH:-}" "$PYTHON" -c "import torch, selective_scan_cuda, causal_conv1d_cuda, causal_conv1d, mamba_ssm.ops.selective_scan_interface"; then
        say "installed; mamba_ssm and causal_conv1d import"
    else
        die "the wheels installed but do not import (see the error above); a missing pure-Python dependency of mamba_ssm (e.g. transformers, huggingface_hub, triton) can be installed with pip"
    fi
fi
