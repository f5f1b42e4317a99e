"""DDP end to end on CPU: ``python -m dimlab fit --trainer.devices=2 --trainer.strategy=ddp`` (gloo) trains a tiny DiM;
after every step both replicas hold identical weights and EMA and were fed different batches (checked on every
rank by ``reliability_ddp_probe.ReplicaProbe``), rank 0 alone writes the checkpoint and the run summary, and the
checkpoint holds exactly the replicas' weights and EMA.

The FID sample split over ranks (gathered once) is covered by ``tests/lit/test_fid_callback.py`` (2 ranks vs one)
and ``tests/eval/test_eval_cli_devices.py``; it is not repeated here.
"""

from __future__ import annotations

import json

import torch
from reliability_cli import dimlab_fit, load_checkpoint

STEPS = 4


def test_two_process_ddp_keeps_replicas_identical(digits8, tmp_path):
    root = tmp_path / "ddp"
    proc = dimlab_fit(
        digits8,
        root,
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        f"--trainer.max_steps={STEPS}",
        "--trainer.callbacks+=reliability_ddp_probe.ReplicaProbe",
    )
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-6000:]

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

    summary = json.loads((root / "summary.json").read_text())  # RunSummary is rank-zero only
    assert summary["global_step"] == STEPS and summary["finished"] is True
    assert not list(root.glob(".summary.json.tmp-*"))
