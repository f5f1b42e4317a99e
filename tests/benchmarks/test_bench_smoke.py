"""Smoke runs of the GPU benchmark scripts with --quick on CPU, plus their pure helpers."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dimlab.lit.ema import EMA

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str):
    """Import benchmarks/<name>.py as a module (the scripts are not a package)."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH_DIR))
    return module


def run_script(name: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_bench_train_quick_runs_real_steps_and_writes_json(tmp_path):
    out = tmp_path / "train.json"
    proc = run_script(
        "bench_train",
        "--quick",
        "--device=cpu",
        "--models=dim_s2,uvit_s2",
        "--variants=ckpt+unfused,eager",
        "--batch=2",
        "--find-max-batch",
        "--max-batch-limit=2",
        "--steps=1",
        "--warmup=0",
        f"--out={out}",
    )
    data = json.loads(out.read_text())
    assert data["meta"]["complete"] is True and data["meta"]["device"]
    throughput = [r for r in data["results"] if r.get("kind") == "throughput"]
    searches = [r for r in data["results"] if r.get("kind") == "max_batch"]
    assert [(r["model"], r["variant"]) for r in throughput] == [
        ("dim_s2", "ckpt+unfused"),
        ("dim_s2", "eager"),
        ("uvit_s2", "ckpt+unfused"),
        ("uvit_s2", "eager"),
    ]
    for r in throughput:
        assert r["status"] == "ok", r
        assert r["img_per_s"] > 0 and r["model_tflops_per_s"] > 0 and 0 < r["mfu_datasheet"] < 1
        assert r["img_per_s"] == pytest.approx(r["batch"] / (r["step_ms"] / 1e3), rel=1e-6)
        assert r["gmacs_per_sample"] > 0 and r["params"] > 0
    assert [r["max_batch"] for r in searches] == [2, 2, 2, 2]
    assert "Training step, bf16 autocast" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].startswith("results written to")


@pytest.mark.parametrize(
    ("arg", "word"), [("--models=dim_xl", "dim_xl"), ("--variants=eager,turbo", "turbo")]
)
def test_bench_train_rejects_unknown_model_and_knob(tmp_path, arg, word):
    bench = load_script("bench_train")
    with pytest.raises(SystemExit, match=word):
        bench.main(["--quick", "--device=cpu", arg, f"--out={tmp_path / 'x.json'}"])
    assert not (tmp_path / "x.json").exists()


def test_bench_sampling_quick_reports_per_nfe_times_and_crossover(tmp_path, capsys):
    out = tmp_path / "sampling.json"
    sampling = load_script("bench_sampling")
    argv = ["--quick", "--device=cpu", "--batches=1", "--resolutions=64,128", "--reps=1", "--warmup=0"]
    assert sampling.main([*argv, f"--out={out}"]) == 0
    data = json.loads(out.read_text())
    results = data["results"]
    assert {(r["family"], r["resolution"]) for r in results} == {
        (f, res) for f in ("dim", "uvit") for res in (64, 128)
    }
    assert all(r["status"] == "ok" and r["ms_per_nfe"] > 0 and r["forward_batch"] == 2 for r in results)
    dim_tokens = {r["resolution"]: r["tokens"] for r in results if r["family"] == "dim"}
    assert dim_tokens[128] > dim_tokens[64]
    assert data["crossover"] and data["crossover"][0]["batch"] == 1
    assert "crossover batch 1 eager" in capsys.readouterr().out


def test_find_max_batch_finds_the_threshold():
    bench = load_script("bench_common")
    for threshold in (1, 5, 37, 100, 640, 1000):
        probes = []

        def fits(b, threshold=threshold, probes=probes):
            probes.append(b)
            return b <= threshold

        found = bench.find_max_batch(fits, start=16, limit=1024, granularity=8)
        # Exact below 64 (resolution 1..8 there), within the bisection resolution above.
        assert found <= threshold and threshold - found <= max(1, min(8, found // 8)), (threshold, found)
        assert len(probes) <= 16
    assert bench.find_max_batch(lambda b: False, start=4, limit=64) == 0
    assert bench.find_max_batch(lambda b: True, start=4, limit=50) == 50
    with pytest.raises(ValueError, match="must be >= 1"):
        bench.find_max_batch(lambda b: True, start=0, limit=8)


def test_interleaved_timing_runs_the_variants_round_robin():
    bench = load_script("bench_common")
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    stats = bench.interleaved_seconds(fns, torch.device("cpu"), warmup=2, reps=3)
    assert (
        calls == ["a", "a", "b", "b", "c", "c"] + ["a", "b", "c"] * 3
    )  # warm-ups first, then one of each per rep
    assert set(stats) == {"a", "b", "c"}
    assert all(0 <= s["min"] <= s["median"] <= s["max"] for s in stats.values())


def test_the_unfused_knobs_per_tensor_ema_equals_the_module_ema_update():
    bench = load_script("train_harness")
    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    ema_loop, ema_foreach = EMA(source, decay=0.9), EMA(source, decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            for p in source.parameters():
                p.add_(torch.randn_like(p))
        source.train()(torch.randn(5, 4))  # moves the BatchNorm running stats and its integer counter
        bench.per_tensor_ema_update(ema_loop, source)
        ema_foreach.update(source)
    for (name, a), b in zip(
        ema_loop.module.state_dict().items(), ema_foreach.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert not torch.equal(ema_loop.module[0].weight, copy.deepcopy(source[0].weight))


def test_crossover_from_synthetic_timings():
    sampling = load_script("bench_sampling")

    def rec(family, res, ms):
        return {
            "family": family,
            "batch": 1,
            "variant": "eager",
            "resolution": res,
            "ms_per_nfe": ms,
            "status": "ok",
        }

    results = [rec("dim", 256, 4.0), rec("uvit", 256, 2.0), rec("dim", 512, 8.0), rec("uvit", 512, 8.0)]
    results += [
        rec("dim", 1024, 20.0),
        rec("uvit", 1024, 40.0),
        rec("dim", 2048, 50.0),
        rec("uvit", 2048, 200.0),
    ]
    out = sampling.crossover(results, batch=1, variant="eager")
    assert out["dim_faster_from"] == 1024
    assert out["ratio_one_at"] == pytest.approx(512.0)  # ratio exactly 1 at 512 -> log-ratio 0 there
    assert sampling.crossover(results[:2], batch=1, variant="eager")["dim_faster_from"] is None


def test_profile_train_quick_groups_operator_time_by_category(tmp_path):
    out = tmp_path / "prof.json"
    run_script(
        "profile_train",
        "--quick",
        "--device=cpu",
        "--models=dim_s2",
        "--steps=1",
        "--warmup=0",
        f"--out={out}",
    )
    data = json.loads(out.read_text())
    assert data["meta"]["complete"] is True
    (record,) = data["results"]
    assert record["status"] == "ok" and record["model"] == "dim_s2"
    shares = {c["category"]: c["share"] for c in record["categories"]}
    assert abs(sum(shares.values()) - 1.0) < 1e-6
    assert shares["matmul"] > 0 and shares["gather / scatter"] > 0  # projections; the scan-order gathers
    assert record["kernel_ms_per_step"] > 0 and record["launches_per_step"] > 0


@pytest.mark.parametrize(
    ("kernel", "category"),
    [
        ("void selective_scan_fwd_kernel<Selective_Scan_fwd_kernel_traits<32, 16, 1, true>>", "scan fwd"),
        ("void selective_scan_bwd_kernel<Selective_Scan_bwd_kernel_traits<32, 16, true>>", "scan bwd"),
        ("void causal_conv1d_fwd_kernel<Causal_conv1d_fwd_kernel_traits<128, 4>>", "causal conv1d"),
        ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT", "matmul"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "conv (cuDNN)"),
        ("void at::native::(anonymous namespace)::conv_depthwise2d_forward_kernel<float>", "conv (cuDNN)"),
        ("void at::native::(anonymous namespace)::indexSelectLargeIndex<float, long>", "gather / scatter"),
        ("void at::native::indexFuncLargeIndex<float, long>", "gather / scatter"),
        (
            "void at::native::(anonymous namespace)::CatArrayBatchedCopy<float, unsigned int, 3>",
            "cat / copy / cast",
        ),
        (
            "void at::native::multi_tensor_apply_kernel<TensorListMetadata<4>, FusedAdamMathFunctor>",
            "optimizer + EMA",
        ),
        ("void at::native::reduce_kernel<512, 1, ReduceOp<float, MeanOps<float>>>", "reduction / norm"),
        (
            "void at::native::(anonymous namespace)::GammaBetaBackwardCUDAKernelTemplate<float>",
            "reduction / norm",
        ),
        ("void at::native::vectorized_elementwise_kernel<4, AUnaryFunctor<float>>", "elementwise"),
        ("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64>>", "attention"),
        ("something_unknown", "other"),
    ],
)
def test_profile_categories_match_real_kernel_names(kernel, category):
    assert load_script("profile_train").categorize(kernel) == category


def test_busy_time_is_the_union_of_overlapping_kernels():
    union_us = load_script("profile_train").union_us
    assert union_us([]) == 0
    assert union_us([(0, 10), (5, 15), (20, 30)]) == 25  # overlap counted once, the gap not at all
    assert union_us([(20, 30), (0, 10), (2, 3)]) == 20


def test_bench_sampler_quick_times_the_product_sampler_per_precision(tmp_path):
    out = tmp_path / "sampler.json"
    run_script(
        "bench_sampler",
        "--quick",
        "--device=cpu",
        "--models=dim_h2",
        "--batches=1",
        "--steps=3",
        "--reps=1",
        f"--out={out}",
    )
    data = json.loads(out.read_text())
    assert data["meta"]["complete"] is True
    rows = {r["setting"]: r for r in data["results"]}
    assert set(rows) == {"fp32", "bf16"}  # no CUDA graphs on a CPU
    for r in rows.values():
        assert r["status"] == "ok" and r["finite"] and r["ms_per_nfe"] > 0
        assert r["ms_per_call"] == pytest.approx(3 * r["ms_per_nfe"])
