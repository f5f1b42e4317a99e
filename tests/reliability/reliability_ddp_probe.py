"""A callback for the DDP tests, imported by every rank of a ``python -m dimlab fit`` run (``PYTHONPATH``).

After every optimizer step it all-gathers the flattened backbone and EMA weights and a fingerprint of the batch,
asserts on every rank that the replicas hold identical weights and that the ranks were fed different batches,
and at the end writes what it saw to ``<default_root_dir>/probe-rank<r>.pt`` for the test to compare with the
checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([v.detach().flatten().float() for v in module.state_dict().values()])


class ReplicaProbe(L.Callback):
    """Asserts replica equality (weights and EMA) and distinct per-rank batches after each step."""

    def __init__(self):
        self.steps: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        strategy = trainer.strategy
        weights = strategy.all_gather(_flat(pl_module.backbone))
        ema = strategy.all_gather(_flat(pl_module.ema.module))
        x = batch["x"].double()
        fingerprint = torch.stack([x.sum(), (x * x).sum(), batch["y"].double().sum()])
        batches = strategy.all_gather(fingerprint)
        assert weights.shape[0] == trainer.world_size == 2, weights.shape
        step = trainer.global_step
        for rank in range(1, trainer.world_size):
            assert torch.equal(weights[rank], weights[0]), (
                f"step {step}: rank {rank} weights differ from rank 0"
            )
            assert torch.equal(ema[rank], ema[0]), f"step {step}: rank {rank} EMA differs from rank 0"
            assert not torch.equal(batches[rank], batches[0]), (
                f"step {step}: ranks 0 and {rank} got the same batch"
            )
        self.steps.append(step)

    def on_train_end(self, trainer, pl_module):
        out = Path(trainer.default_root_dir) / f"probe-rank{trainer.global_rank}.pt"
        torch.save(
            {
                "steps": self.steps,
                "world_size": trainer.world_size,
                "weights": _flat(pl_module.backbone),
                "ema": _flat(pl_module.ema.module),
            },
            out,
        )
