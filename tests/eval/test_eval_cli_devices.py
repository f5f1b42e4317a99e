"""``dimlab fid --devices 2`` on CPU: two Fabric ranks (gloo) score halves and report the one-device FID."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dimlab.commands.fid import main


@pytest.mark.slow
def test_two_cpu_ranks_match_one(tmp_path, small_images, random_inception_weights):
    images = tmp_path / "imgs.npz"
    np.savez(images, small_images.permute(0, 2, 3, 1).numpy())
    real = tmp_path / "real.npz"
    np.savez(real, np.flip(small_images.permute(0, 2, 3, 1).numpy(), axis=2))
    ref = tmp_path / "ref.npz"
    weights = ["--feature-dim", "64", "--inception-weights", str(random_inception_weights), "--no-progress"]
    assert main(["ref-stats", str(real), str(ref), *weights]) == 0
    common = [
        "--images",
        str(images),
        "--ref",
        str(ref),
        "--accelerator",
        "cpu",
        "--batch-size",
        "2",
        *weights,
    ]
    assert main([*common, "--out", str(tmp_path / "one.json")]) == 0
    two = [*common, "--devices", "2", "--strategy", "ddp_fork", "--out", str(tmp_path / "two.json")]
    assert main(two) == 0
    one_report = json.loads((tmp_path / "one.json").read_text())
    two_report = json.loads((tmp_path / "two.json").read_text())
    assert two_report["world_size"] == 2 and one_report["world_size"] == 1
    assert two_report["num_samples"] == one_report["num_samples"] == 8
    assert two_report["fid"] == pytest.approx(one_report["fid"], rel=1e-5)
    assert one_report["fid"] > 0
