"""DDP end to end: ``python -m dimlab fit --trainer.devices=2 --trainer.strategy=ddp`` trains a tiny DiM; after every
step both replicas hold identical weights and EMA and were fed different batches (checked on every rank by
``reliability_ddp_probe.ReplicaProbe``), rank 0 alone writes the checkpoint and the run summary, and the
checkpoint holds exactly the replicas' weights and EMA.

Two set-ups run the same assertions: 2 CPU processes over gloo (always), and 2 CUDA devices over NCCL with
``precision: bf16-mixed`` and NVLink multicast off (``NCCL_NVLS_ENABLE=0``, see docs/scaling.md), marked ``gpu``
and skipped with fewer than 2 CUDA devices.

The FID sample split over ranks (gathered once) is covered by ``tests/lit/test_fid_callback.py`` (2 ranks vs one)
and ``tests/eval/test_eval_cli_devices.py``; it is not repeated here.
"""

from __future__ import annotations

import json

import pytest
import torch
from reliability_cli import dimlab_fit, load_checkpoint

STEPS = 4

#: set-up -> (extra ``dimlab fit`` arguments, the process-group backend Lightning must report)
SETUPS = {
    "cpu_gloo": (("--trainer.accelerator=cpu",), "gloo"),
    "gpu_nccl_bf16": (("--trainer.accelerator=gpu", "--trainer.precision=bf16-mixed"), "nccl"),
}


@pytest.mark.parametrize(
    "setup",
    [
        "cpu_gloo",
        pytest.param(
            "gpu_nccl_bf16",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices"),
            ],
        ),
    ],
)
def test_two_process_ddp_keeps_replicas_identical(digits8, tmp_path, monkeypatch, setup):
    extra, backend = SETUPS[setup]
    # Inherited by both ranks (dimlab_fit copies os.environ); NCCL reads it at communicator creation.
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    root = tmp_path / "ddp"
    proc = dimlab_fit(
        digits8,
        root,
        *extra,
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        f"--trainer.max_steps={STEPS}",
        "--trainer.callbacks+=reliability_ddp_probe.ReplicaProbe",
    )
    # On GPU (~30 s expected) well inside run_multi_gpu.sh's 210 s limit for all its tests, so a hang fails here.
    output, _ = proc.communicate(timeout=300 if backend == "gloo" else 150)
    assert proc.returncode == 0, output[-6000:]
    assert f"distributed_backend={backend}" in output, output[-6000:]

    probes = [torch.load(root / f"probe-rank{r}.pt", weights_only=False) for r in range(2)]
    for probe in probes:
        assert probe["world_size"] == 2 and probe["steps"] == list(range(1, STEPS + 1))
    assert torch.equal(probes[0]["weights"], probes[1]["weights"])
    assert torch.equal(probes[0]["ema"], probes[1]["ema"])
    assert not torch.equal(probes[0]["weights"], probes[0]["ema"]), "the EMA lags the weights"

    ckpt = load_checkpoint(root / "ckpt" / "last.ckpt")
    assert ckpt["global_step"] == STEPS
    weights = torch.cat(
        [v.flatten().float() for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")]
    )
    ema = torch.cat([v.flatten().float() for v in ckpt["ema_backbone"].values()])
    assert torch.equal(weights, probes[0]["weights"]) and torch.equal(ema, probes[0]["ema"])
    assert ckpt["ShardDataModule"]["world_size"] == 2
    assert sorted(p.name for p in (root / "ckpt").iterdir()) == ["last.ckpt"], (
        "no stray files beside last.ckpt"
    )

    summary = json.loads((root / "summary.json").read_text())  # RunSummary is rank-zero only
    assert summary["global_step"] == STEPS and summary["finished"] is True
    assert not list(root.glob(".summary.json.tmp-*"))
