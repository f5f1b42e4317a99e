"""benchmarks/bench_ddp.py on CPU: 1 and 2 gloo ranks through the real Lightning Trainer (--quick), its scaling
arithmetic, and the clean-up of a worker's launched ranks."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_ddp.py"


def _bench_module():
    saved = list(sys.path)  # the script puts its own folder first on sys.path
    try:
        spec = importlib.util.spec_from_file_location("bench_ddp", BENCH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


@pytest.mark.slow
def test_quick_run_measures_one_and_two_cpu_ranks(tmp_path):
    out = tmp_path / "ddp.json"
    env = {k: v for k, v in os.environ.items() if k != "NCCL_NVLS_ENABLE"}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--device=cpu", "--configs=ddp1,ddp2", "--warmup=1",
         "--steps=2", f"--out={out}"],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())
    meta = data["meta"]
    assert meta["complete"] is True and meta["commit"] and meta["date"]
    assert meta["command"].startswith("bench_ddp.py --quick") and meta["nccl_nvls_enable"] == "0"

    by_config = {r["config"]: r for r in data["results"]}
    assert list(by_config) == ["ddp1", "ddp2"]
    for r in by_config.values():
        assert r["status"] == "ok", r
        assert r["strategy"] == "ddp" and r["process_group_backend"] == "gloo"
        assert r["nccl_nvls_enable"] == "0", "the launched ranks see NVLink multicast off"
        assert r["multicast_env"] == {
            "NCCL_NVLS_ENABLE": "0",
            "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
            "NVSHMEM_DISABLE_NVLS": "1",
        }
        assert len(r["seconds_per_rank"]) == len(r["peak_rss_gib_per_rank"]) == r["devices"]
        assert r["seconds"] == max(r["seconds_per_rank"]) > 0
        assert r["img_per_s"] > 0 and all(m > 0 for m in r["peak_rss_gib_per_rank"])
        assert r["img_per_s"] == pytest.approx(r["global_batch"] * r["steps"] / r["seconds"])
        assert r["callbacks"] == ["PreemptionCheckpoint", "NonFiniteGuard"]
    assert by_config["ddp1"]["devices"] == 1 and by_config["ddp2"]["devices"] == 2
    assert by_config["ddp2"]["global_batch"] == 2 * by_config["ddp1"]["global_batch"] == 8

    scaling = data["scaling"]
    expected = by_config["ddp2"]["img_per_s"] / (2 * by_config["ddp1"]["img_per_s"])
    assert scaling["efficiency"] == pytest.approx(expected) and scaling["efficiency"] > 0
    assert scaling["efficiency_vs_single"] is None
    lines = proc.stdout.rstrip().splitlines()
    assert lines[-1] == f"results written to {out}"
    assert lines[-2].startswith("scaling efficiency img/s(ddp2) / (2 x img/s(ddp1)): ")


def test_scaling_needs_both_configs_and_ignores_failed_ones():
    bench = _bench_module()
    ok = {"status": "ok"}
    results = {
        "ddp1": {**ok, "img_per_s": 100.0},
        "ddp2": {**ok, "img_per_s": 180.0},
        "single": {**ok, "img_per_s": 110.0},
    }
    scaling = bench._scaling(results)
    assert scaling["efficiency"] == pytest.approx(0.9)
    assert scaling["efficiency_vs_single"] == pytest.approx(180 / 220)
    assert scaling["ddp1_over_single"] == pytest.approx(100 / 110)
    results["ddp1"] = {"status": "timeout after 180 s"}
    assert bench._scaling(results)["efficiency"] is None


@pytest.mark.parametrize("arg", ["--configs=ddp1,ring4", "--configs=ddp0", "--configs=,"])
def test_bad_configs_are_rejected(tmp_path, arg):
    bench = _bench_module()
    with pytest.raises(SystemExit, match="bad --configs"):
        bench.main(["--quick", "--device=cpu", arg, f"--out={tmp_path / 'x.json'}"])
    assert not (tmp_path / "x.json").exists()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_timed_out_worker_takes_the_ranks_it_launched_with_it(tmp_path):
    """A hung rank 0 is killed at the timeout together with the rank it started (a grandchild of the benchmark)."""
    bench = _bench_module()
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(120)\n"
    )
    start = time.monotonic()
    rc = bench._Workers().run([sys.executable, "-c", script], dict(os.environ), timeout=5)
    assert rc == "timeout" and time.monotonic() - start < 60
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def test_config_names_give_strategy_and_device_count():
    bench = _bench_module()
    assert bench.parse_config("ddp8") == ("ddp", 8)
    assert bench.parse_config("fsdp-full4") == ("fsdp:FULL_SHARD", 4)
    assert bench.parse_config("fsdp-grad2") == ("fsdp:SHARD_GRAD_OP", 2)
    assert bench.parse_config("single") == ("auto", 1)
    with pytest.raises(ValueError):
        bench.parse_config("ddp0")
    strategy = bench.make_strategy("fsdp:SHARD_GRAD_OP")  # the FSDP overlay's settings, with this sharding
    assert type(strategy).__name__ == "FSDPStrategy"
    assert str(strategy.sharding_strategy).endswith("SHARD_GRAD_OP")


def test_scaling_against_one_gpu_and_fsdp_against_ddp():
    bench = _bench_module()
    ok = {"status": "ok"}
    results = {
        "ddp1": {**ok, "img_per_s": 100.0},
        "ddp4": {**ok, "img_per_s": 380.0},
        "ddp8": {**ok, "img_per_s": 760.0},
        "fsdp-full8": {**ok, "img_per_s": 700.0},
        "fsdp-grad8": {"status": "oom"},
    }
    scaling = bench._scaling(results)
    assert scaling["efficiency_by_config"]["ddp4"] == pytest.approx(0.95)
    assert scaling["efficiency_by_config"]["ddp8"] == pytest.approx(0.95)
    assert scaling["fsdp_over_ddp"] == {"fsdp-full8": pytest.approx(700 / 760)}
    assert scaling["efficiency"] is None  # no ddp2 measured
