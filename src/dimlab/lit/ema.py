"""Exponential moving average of a backbone's weights, updated once per optimizer step."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """A frozen copy of a module whose floating-point parameters and buffers track ``decay``-EMAs of the source.

    Lightning's ``WeightAveraging`` callback swaps whole LightningModules and counts its own steps; DiM needs the
    EMA of the *backbone only*, started as an exact copy at step 0 (official recipe: 0.9999 from step 1), stored in
    the checkpoint as a plain backbone state dict (``ema_backbone``) that :func:`dimlab.load_backbone`, sampling and
    FID read directly, and advanced exactly once per optimizer step even under gradient accumulation. This small
    class does just that; the LightningModule calls :meth:`update` from its ``optimizer_step`` hook.
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
        """Move every floating tensor towards ``source``: ema = decay * ema + (1 - decay) * source."""
        ema_state = self.module.state_dict()
        for name, value in source.state_dict().items():
            target = ema_state[name]
            if target.dtype.is_floating_point:
                target.lerp_(value.detach().to(target.dtype), 1.0 - self.decay)
            else:
                target.copy_(value)

    @torch.no_grad()
    def copy_from(self, source: nn.Module) -> None:
        """Reset the average to an exact copy of ``source`` (the official fine-tune start)."""
        self.module.load_state_dict(source.state_dict())

    def train(self, mode: bool = True):  # noqa: D102 - the average is never put in training mode
        return super().train(False)
