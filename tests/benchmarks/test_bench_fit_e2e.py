"""benchmarks/bench_fit_e2e.py on CPU (--quick): the real ``dimlab fit`` on synthetic latent shards, no VAE."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_fit_e2e.py"


def test_quick_run_trains_on_latent_shards_and_compares_with_the_harness(tmp_path):
    harness = tmp_path / "train.json"
    harness.write_text(json.dumps({"results": [{"model": "dim_h2", "batch": 8, "img_per_s": 10.0}]}))
    out = tmp_path / "fit.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", f"--compare={harness}", f"--out={out}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())["results"][0]
    assert record["steps"] == 8 and record["fit_images_per_s"] > 0
    assert record["harness_images_per_s"] == 10.0
    assert abs(record["fit_share_of_harness"] - record["fit_images_per_s"] / 10.0) < 1e-9
    assert record["loader_samples_per_s"] > 0 and record["final_loss"] > 0


def test_a_failing_fit_is_reported_with_its_exit_status(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", f"--out={tmp_path / 'x.json'}", "--", "--model.lr=oops"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "dimlab fit failed (exit" in proc.stderr
