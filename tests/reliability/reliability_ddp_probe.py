"""A callback for the DDP tests, imported by every rank of a ``python -m dimlab fit`` run (``PYTHONPATH``).

After every optimizer step it all-gathers the flattened backbone (whole, also under FSDP) and EMA weights and a fingerprint of the batch,
asserts on every rank that the replicas hold identical weights and that the ranks were fed different batches,
and at the end writes what it saw to ``<default_root_dir>/probe-rank<r>.pt`` for the test to compare with the
checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([v.detach().flatten().float() for v in module.state_dict().values()])


class ReplicaProbe(L.Callback):
    """Asserts replica equality (weights and EMA) and distinct per-rank batches after each step."""

    def __init__(self):
        self.steps: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        strategy = trainer.strategy
        if isinstance(strategy, FSDPStrategy):  # each rank holds a shard: compare the whole weights
            with FullyShardedDataParallel.summon_full_params(strategy.model, writeback=False):
                weights = strategy.all_gather(
                    torch.cat([p.detach().flatten().float() for p in pl_module.backbone.parameters()])
                )
        else:
            weights = strategy.all_gather(_flat(pl_module.backbone))
        ema = strategy.all_gather(_flat(pl_module.ema.module))
        x = batch["x"].double()
        fingerprint = torch.stack([x.sum(), (x * x).sum(), batch["y"].double().sum()])
        batches = strategy.all_gather(fingerprint)
        assert weights.shape[0] == trainer.world_size, weights.shape
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
        record = {
            "steps": self.steps,
            "world_size": trainer.world_size,
            "ema": _flat(pl_module.ema.module).cpu(),
        }
        if not isinstance(trainer.strategy, FSDPStrategy):
            record["weights"] = _flat(pl_module.backbone).cpu()
        torch.save(record, out)


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy with the FSDP units placed on the CPU, so FSDP runs on a CPU-only machine (gloo).

    Stock Lightning refuses FSDP without a GPU (an exact type check on ``FSDPStrategy``, which a subclass passes)
    and hands FSDP ``device_id=None`` on CPU, which torch's FSDP rejects ("needs a non-CPU accelerator"); an
    explicit CPU ``device_id`` is accepted. Everything else (auto-wrap policy, ignored modules, gathering, full
    state-dict checkpoints, gradient clipping) is Lightning's and torch's own code.
    """

    def _setup_model(self, model):
        from lightning.pytorch.strategies.fsdp import _setup_activation_checkpointing

        model = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model

    def optimizer_state(self, optimizer):
        """Lightning's full optimizer state, gathered without ``offload_to_cpu``.

        With offloading, torch's FSDP moves each gathered state to the CPU with ``.cpu()``, which copies on a GPU
        but returns the shared gather buffer itself on a CPU, so ``exp_avg`` ends up holding ``exp_avg_sq``. Only
        FSDP placed on the CPU (this class) is affected.
        """
        from torch.distributed.fsdp import (
            FullOptimStateDictConfig,
            FullStateDictConfig,
            OptimStateKeyType,
            StateDictType,
        )

        optimizer = getattr(optimizer, "_optimizer", optimizer)
        with FullyShardedDataParallel.state_dict_type(
            self.model,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True),
        ):
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:
                state = FullyShardedDataParallel.rekey_optim_state_dict(
                    state, OptimStateKeyType.PARAM_ID, self.model
                )
            return state
