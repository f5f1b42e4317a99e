"""CPU smoke run of benchmarks/bench_highres.py --quick (the lead runs the full DiM-H/2 1536 px case on a GPU)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_highres.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_highres", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_highres"] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_times_upsampled_sampling_through_the_low_resolution_branch(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "highres.json"
    assert (
        bench.main(["--quick", "--device", "cpu", "--steps", "3", "--warmup-steps", "0", "--out", str(out)])
        == 0
    )
    data = json.loads(out.read_text())
    assert data["meta"]["complete"] and data["meta"]["sampler"] == "dpm" and data["meta"]["cfg_scale"] == 3.0
    results = {r["pixels"]: r for r in data["results"]}
    assert sorted(results) == [128, 192]  # 2x and 3x of the tiny model's 64 px (latent 8)
    for pixels, m in ((128, 2), (192, 3)):
        r = results[pixels]
        latent = pixels // 8
        assert r["m"] == m and r["latent"] == latent and r["finite"]
        assert r["calls"] == 3 and 1 <= r["calls_with_low_res_branch"] < 3
        # CFG doubles the batch: every call runs the high-resolution grid, active calls also the trained grid
        assert r["backbone_forwards"] == {
            f"2x4x{latent}x{latent}": 3,
            "2x4x8x8": r["calls_with_low_res_branch"],
        }
        assert r["tokens"] > r["low_res_tokens"] and r["s_per_step_mean"] > 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("results written to") and "pixels" in "\n".join(lines[-6:])


def test_full_size_token_count_matches_the_issue():
    """1536 px = latent 192 = 96x96 patches: about 9,800 tokens in DiM-H/2's stream (meta device, no memory)."""
    bench = _load()
    with torch.device("meta"):
        model = bench.build_backbone("dim_h2_512", scan_backend="torch")
    assert 9_700 < bench.sequence_length(model, 192) < 9_900


def test_rejects_sizes_that_are_not_an_integer_multiple(tmp_path):
    bench = _load()
    with pytest.raises(SystemExit):
        bench.parse_args(["--quick", "--device", "cpu", "--pixels", "96", "--out", str(tmp_path / "x.json")])


@pytest.mark.gpu
@pytest.mark.cuda_kernels
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quick_run_on_cuda_with_the_kernel_scan_reports_peak_memory(tmp_path):
    bench = _load()
    out = tmp_path / "highres_cuda.json"
    argv = ["--quick", "--device", "cuda", "--scan-backend", "cuda", "--steps", "3", "--out", str(out)]
    assert bench.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["scan_backend"] == "cuda"
    for r in data["results"]:
        assert r["finite"] and r["peak_mem_gib"] > 0 and r["calls_with_low_res_branch"] >= 1
