"""Smoke runs of the Triton-kernel benchmark scripts on CPU (the kernels in Triton's interpreter, tiny shapes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
pytest.importorskip("dimlab.kernels", reason="Triton is not installed")


def run_script(name: str, *args: str, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_bench_scan_quick_times_triton_against_the_torch_scan(tmp_path):
    out = tmp_path / "scan.json"
    run_script(
        "bench_scan",
        "--quick",
        "--device=cpu",
        "--backends=triton,torch",
        "--configs=t_save=4,t_sub=2,min_segment=2",
        f"--out={out}",
        TRITON_INTERPRET="1",
    )
    data = json.loads(out.read_text())
    assert data["meta"]["complete"] is True
    records = {(r["case"], r["backend"]): r for r in data["results"]}
    assert set(records) == {(c, b) for c in ("tiny", "tiny_split") for b in ("triton", "torch")}
    assert all(r["status"] == "ok" and r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 for r in records.values())
    assert records[("tiny_split", "triton")]["segments_train"] > 1  # the split path was timed too
    assert records[("tiny", "triton")]["config"] == "min_segment=2,t_save=4,t_sub=2"


def test_bench_conv_quick_times_the_triton_conv_against_its_bytes_floor(tmp_path):
    out = tmp_path / "conv.json"
    proc = run_script("bench_conv", "--quick", "--device=cpu", f"--out={out}", TRITON_INTERPRET="1")
    data = json.loads(out.read_text())
    assert data["meta"]["complete"] is True and data["meta"]["copy_gbps"] > 0
    (record,) = data["results"]  # causal-conv1d is skipped on the CPU
    assert record["backend"] == "triton" and record["status"] == "ok"
    assert record["fwdbwd_ms"] > 0 and record["floor_fwdbwd_ms"] == pytest.approx(
        2.5 * record["floor_fwd_ms"]
    )
    assert "skipping backend 'cuda'" in proc.stdout


def test_ncu_target_runs_the_scan_and_conv_kernels():
    proc = run_script("ncu_scan", "--case=tiny", "--device=cpu", TRITON_INTERPRET="1")
    assert "scan fwd+bwd" in proc.stdout and "conv fwd+bwd" in proc.stdout


def test_bench_scan_names_what_it_needs():
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / "bench_scan.py"), "--quick", "--device=cpu", "--out=/dev/null"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"},
    )
    assert proc.returncode != 0 and "TRITON_INTERPRET=1" in proc.stderr
    bad = subprocess.run(
        [
            sys.executable,
            str(BENCH_DIR / "bench_scan.py"),
            "--device=cpu",
            "--configs=warps=2",
            "--out=/dev/null",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    assert bad.returncode != 0 and "unknown field 'warps'" in bad.stderr


def test_profile_sampling_quick_groups_kernel_time_per_nfe(tmp_path):
    out = tmp_path / "ps.json"
    run_script(
        "profile_sampling",
        "--quick",
        "--device=cpu",
        "--models=dim_h2",
        "--resolutions=64",
        "--batches=1",
        "--scan-backend=torch",
        f"--out={out}",
    )
    data = json.loads(out.read_text())
    (record,) = data["results"]
    assert record["status"] == "ok" and record["forward_batch"] == 2
    shares = {c["category"]: c["share"] for c in record["categories"]}
    assert abs(sum(shares.values()) - 1.0) < 1e-6 and shares["matmul"] > 0
    assert record["ms_per_nfe_unprofiled"] > 0


@pytest.mark.parametrize(
    ("kernel", "category"),
    [
        ("scan_fwd_kernel", "scan fwd"),
        ("scan_carry_kernel", "scan fwd"),
        ("scan_bwd_kernel", "scan bwd"),
        ("scan_bwd_lambda_kernel", "scan bwd"),
        ("conv_fwd_kernel", "causal conv1d"),
        ("conv_bwd_kernel", "causal conv1d"),
    ],
)
def test_profile_categories_know_the_triton_kernels(kernel, category):
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import profile_train
    finally:
        sys.path.remove(str(BENCH_DIR))
    assert profile_train.categorize(kernel) == category
