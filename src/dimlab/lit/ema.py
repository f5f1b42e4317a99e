"""Exponential moving average of a backbone's weights, updated once per optimizer step, and its FSDP plumbing.

The EMA stays a whole (unsharded) copy on every rank, also under FSDP: FSDP is told to ignore it, it is updated
from the gathered backbone, and checkpoints store it as a plain backbone state dict (``ema_backbone``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel

__all__ = [
    "EMA",
    "EMA_CHECKPOINT_KEY",
    "exclude_from_fsdp",
    "fsdp_root",
    "restore_ema_state",
    "store_ema_state",
    "update_ema",
]

#: The checkpoint entry holding the EMA weights as a plain backbone state dict.
EMA_CHECKPOINT_KEY = "ema_backbone"

# Name parts that FSDP and activation-checkpoint wrappers insert into parameter names.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


class EMA(nn.Module):
    """A frozen copy of a module whose floating-point parameters and buffers track ``decay``-EMAs of the source.

    Lightning's ``WeightAveraging`` callback swaps whole LightningModules and counts its own steps; DiM needs the
    EMA of the *backbone only*, started as an exact copy at step 0 (official recipe: 0.9999 from step 1), stored in
    the checkpoint as a plain backbone state dict (``ema_backbone``) that :func:`dimlab.load_backbone`, sampling and
    FID read directly, and advanced exactly once per optimizer step even under gradient accumulation. This small
    class does just that; the LightningModule calls :func:`update_ema` from its ``optimizer_step`` hook.
    """

    def __init__(self, source: nn.Module, decay: float = 0.9999):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(source)
        self.module.requires_grad_(False)
        self.module.eval()

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        """Move every floating tensor towards ``source``: ema = decay * ema + (1 - decay) * source.

        One multi-tensor ``torch._foreach_lerp_`` over all floating tensors (what ``torch.optim.swa_utils`` uses
        for its EMA), a few kernels instead of one per tensor; the same ``lerp`` as ``Tensor.lerp_``.
        """
        ema_state = self.module.state_dict()
        targets, sources = [], []
        for name, value in source.state_dict().items():
            target = ema_state[name]
            if target.dtype.is_floating_point:
                targets.append(target)
                sources.append(value.detach().to(target.dtype))
            else:
                target.copy_(value)
        if targets:
            torch._foreach_lerp_(targets, sources, 1.0 - self.decay)

    def train(self, mode: bool = True):  # noqa: D102 - the average is never put in training mode
        return super().train(False)


class _UnwrappedTensors:
    """A backbone's tensors under their plain names (wrapper prefixes removed), shaped like a module for
    :meth:`EMA.update`, which only reads ``state_dict()``. Used under FSDP inside ``summon_full_params``, where the
    parameters are whole but ``state_dict()`` would go through FSDP's own hooks."""

    def __init__(self, module: nn.Module, names: Iterable[str]):
        tensors = {}
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            for prefix in _WRAPPER_PREFIXES:
                name = name.replace(prefix, "")
            tensors[name] = tensor
        names = list(names)
        missing = [n for n in names if n not in tensors]
        if missing:
            raise RuntimeError(f"EMA update under FSDP: backbone tensors not found: {missing[:5]}")
        self._tensors = {n: tensors[n] for n in names}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._tensors


def fsdp_root(trainer) -> FullyShardedDataParallel | None:
    """The FSDP-wrapped root module when training under Lightning's FSDPStrategy, else None."""
    model = getattr(getattr(trainer, "strategy", None), "model", None)
    return model if isinstance(model, FullyShardedDataParallel) else None


def exclude_from_fsdp(strategy, ema: EMA) -> None:
    """Under an ``FSDPStrategy``, have FSDP leave ``ema`` alone (call before the model is wrapped).

    The EMA stays whole on every rank: it is updated from the gathered backbone (:func:`update_ema`), and sharding
    it would put its tensors in FSDP's flat buffers under other names. Other strategies: nothing to do.
    """
    if not isinstance(strategy, FSDPStrategy):
        return
    if not strategy.kwargs.get("use_orig_params", True):
        raise ValueError(
            "FSDPStrategy(use_orig_params=False) is not supported: the EMA needs the original parameters"
        )
    ignored = strategy.kwargs.setdefault("ignored_modules", [])
    if not any(m is ema for m in ignored):
        ignored.append(ema)


def update_ema(ema: EMA, backbone: nn.Module, trainer) -> None:
    """One EMA step towards ``backbone``; under FSDP from its gathered (whole) parameters."""
    root = fsdp_root(trainer)
    if root is None:
        ema.update(backbone)
        return
    with FullyShardedDataParallel.summon_full_params(root, writeback=False):
        ema.update(_UnwrappedTensors(backbone, ema.module.state_dict().keys()))


def store_ema_state(checkpoint: dict, ema: EMA, prefix: str, trainer) -> None:
    """Put the EMA weights in ``checkpoint[EMA_CHECKPOINT_KEY]`` (unprefixed) and drop their module-state copies.

    ``prefix`` is where the EMA's weights sit in ``checkpoint["state_dict"]`` (``"ema.module."``). FSDP loads the
    module state from the file strictly, before ``restore_ema_state`` could put the EMA back, so its checkpoints
    keep the prefixed keys; the tensors are shared with ``ema_backbone`` and stored once.
    """
    state = checkpoint["state_dict"]
    ema_keys = [k for k in state if k.startswith(prefix)]
    if ema_keys:
        checkpoint[EMA_CHECKPOINT_KEY] = {k[len(prefix) :]: state[k] for k in ema_keys}
    elif state:  # a state dict without the EMA (FSDP leaving out the module it ignores): it is whole here
        checkpoint[EMA_CHECKPOINT_KEY] = {k: v.detach().cpu() for k, v in ema.module.state_dict().items()}
    else:  # FSDP gathers the state on rank 0 only; this rank writes nothing
        checkpoint[EMA_CHECKPOINT_KEY] = {}
    if fsdp_root(trainer) is None:
        for k in ema_keys:
            del state[k]


def restore_ema_state(checkpoint: dict, ema: EMA, prefix: str) -> None:
    """The inverse of :func:`store_ema_state`, before Lightning loads the module state."""
    weights = checkpoint.get(EMA_CHECKPOINT_KEY)
    if not weights:
        return
    state = checkpoint.get("state_dict")
    if state is None:  # FSDP has already loaded (and removed) the module state; the EMA lives outside FSDP
        ema.module.load_state_dict(weights)
        return
    for k, v in weights.items():
        state.setdefault(prefix + k, v)
