"""A corrupt sample in the training shards mid-run: skipped, counted, logged as ``data/skipped_samples``, and the run
goes on to ``max_steps``."""

from __future__ import annotations

import io
import logging
import shutil
import tarfile

import lightning as L
import torch

from dimlab.lit.faults import SkippedSampleMonitor
from dimlab.lit.module import DiffusionModule
from tiny_models import digits8_data, tiny_dim, tiny_trainer


def _corrupt_first_png(shard) -> str:
    """Rewrite ``shard`` with its first PNG member replaced by garbage; returns that member's name."""
    out = io.BytesIO()
    corrupted = None
    with tarfile.open(shard) as source, tarfile.open(fileobj=out, mode="w") as target:
        for info in source.getmembers():
            payload = source.extractfile(info).read()
            if corrupted is None and info.name.endswith(".png"):
                corrupted, payload = info.name, b"\x89PNG not really"
                info.size = len(payload)
            target.addfile(info, io.BytesIO(payload))
    shard.write_bytes(out.getvalue())
    return corrupted


def test_corrupt_training_sample_is_skipped_counted_and_logged(digits8, tmp_path, caplog):
    data_dir = tmp_path / "digits"
    shutil.copytree(digits8, data_dir)
    names = [_corrupt_first_png(shard) for shard in sorted(data_dir.glob("train-*.tar"))]
    assert all(names)

    L.seed_everything(0)
    module = DiffusionModule(tiny_dim(num_classes=10), schedule="vp_sde", warmup_steps=0)
    data = digits8_data(data_dir, samples_per_epoch=64, shuffle_buffer=20)
    trainer = tiny_trainer(tmp_path, max_steps=4, log_every_n_steps=1, callbacks=[SkippedSampleMonitor()])
    with caplog.at_level(logging.WARNING, logger="dimlab.data"):
        trainer.fit(module, data)

    assert trainer.global_step == 4
    skipped = data.skipped_samples
    assert skipped >= 1, "every training shard starts with a corrupt sample"
    assert trainer.callback_metrics["data/skipped_samples"] == torch.tensor(float(skipped))
    assert any(name.removesuffix(".png") in caplog.text for name in names)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
