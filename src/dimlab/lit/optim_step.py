"""The optimizer-step tail of a training step: one gradient norm per step, clipping by it, the AdamW choice.

A step's gradient norm is wanted three times: by :class:`dimlab.lit.faults.NonFiniteGuard` (is it finite?), by
the module's ``train/grad_norm`` log, and by norm clipping. Each used to compute it again, the log one norm
kernel per parameter (hundreds of launches a step). :class:`StepGradNorm` computes it once per backward with
torch's multi-tensor norm and hands the same tensor to all three; :func:`clip_to_norm` clips with it, which is
what ``torch.nn.utils.clip_grad_norm_`` does after computing the same norm itself.
"""

from __future__ import annotations

import torch

__all__ = ["StepGradNorm", "clip_to_norm", "optimizer_gradients", "use_fused_adamw"]


def optimizer_gradients(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The gradients the optimizer would apply now (parameters without a gradient left out)."""
    return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


class StepGradNorm:
    """The total L2 norm of an optimizer's gradients, computed at most once between two backward passes.

    Call :meth:`invalidate` after every backward (the LightningModule's ``on_after_backward``) and :meth:`get`
    wherever the norm is needed; the tensor stays on the gradients' device (no host sync). ``None`` when there
    are no gradients (a step whose gradients a guard dropped).
    """

    def __init__(self):
        self._norm: torch.Tensor | None = None
        self._valid = False

    def invalidate(self) -> None:
        """Forget the norm: the gradients changed."""
        self._norm, self._valid = None, False

    def get(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """The norm of ``optimizer``'s current gradients (computed on the first call after :meth:`invalidate`)."""
        if not self._valid:
            grads = optimizer_gradients(optimizer)
            self._norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0) if grads else None
            self._valid = True
        return self._norm


def clip_to_norm(optimizer: torch.optim.Optimizer, max_norm: float, total_norm: torch.Tensor | None) -> None:
    """Scale the optimizer's gradients by ``min(1, max_norm / (total_norm + 1e-6))``, as ``clip_grad_norm_``.

    ``total_norm`` must be the norm of these gradients (:class:`StepGradNorm`); nothing happens without one.
    """
    if total_norm is None:
        return
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total_norm)


def use_fused_adamw(params: list[torch.Tensor], trainer=None) -> bool:
    """Whether AdamW should run fused (one kernel per parameter group and dtype instead of a dozen multi-tensor
    launches): every parameter on a CUDA device and, under a Trainer, no gradient scaler (``16-mixed``: a fused
    optimizer unscales inside its step, after the guard and the norm would have seen scaled gradients) and no
    clipping by value (Lightning refuses to clip a fused optimizer's gradients; dimlab clips by norm itself)."""
    if not params or not all(p.is_cuda and p.is_floating_point() for p in params):
        return False
    if trainer is None:
        return True
    if getattr(getattr(trainer, "precision_plugin", None), "scaler", None) is not None:
        return False
    return (
        getattr(trainer, "gradient_clip_algorithm", None) in (None, "norm") or not trainer.gradient_clip_val
    )
