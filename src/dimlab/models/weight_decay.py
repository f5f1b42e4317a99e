"""Which parameters an optimizer usually leaves undecayed: one rule for every backbone.

A parameter is exempt when it is one-dimensional (biases, norm weights, Mamba's ``D``), when it carries
mamba-ssm's ``_no_weight_decay`` marker (``A_log`` and ``D``), when it belongs to a module of one of the given
types (DiM's embedding tables), or when its name is listed (position tables, pad tokens). Each backbone states
its types and names in its ``no_weight_decay_names()``; the training module's ``weight_decay_mode: standard``
applies the result (the official recipes decay everything).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

__all__ = ["no_weight_decay_names"]


def no_weight_decay_names(
    module: nn.Module, module_types: tuple[type[nn.Module], ...] = (), names: Iterable[str] = ()
) -> set[str]:
    """Names (as ``module.named_parameters()`` gives them) of the parameters exempt from weight decay."""
    listed = set(names)
    exempt = {
        f"{prefix}{'.' if prefix else ''}{name}"
        for prefix, owner in module.named_modules()
        if module_types and isinstance(owner, module_types)
        for name, _ in owner.named_parameters(recurse=False)
    }
    for name, param in module.named_parameters():
        if param.ndim <= 1 or getattr(param, "_no_weight_decay", False) or name in listed:
            exempt.add(name)
    return exempt & {name for name, _ in module.named_parameters()}
