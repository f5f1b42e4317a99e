"""Moving a token sequence into another scan order, with a backward that gathers instead of scattering.

``x.index_select(1, order)`` has ``index_add`` as its backward: a zero fill and a scatter with atomic adds (on CUDA
nondeterministic by default and a slower path under ``torch.use_deterministic_algorithms``). When ``order`` is a
permutation its backward is a gather by the inverse permutation, which is what :func:`permute_tokens` does: no fill,
no atomics, deterministic in any mode, and under ``torch.compile`` a plain indexed load that Inductor can fuse into
the neighbouring kernels. (torch has no permutation-aware ``index_select``; a ``torch.autograd.Function`` is the
documented way to give an op another backward.)
"""

from __future__ import annotations

import torch


class _PermuteTokens(torch.autograd.Function):
    """``x[:, order]`` whose gradient is ``grad[:, inverse]`` (``inverse`` the inverse permutation of ``order``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None


def permute_tokens(x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` (B, L, D) with its tokens gathered by the permutation ``order`` (L,) along dim 1.

    With ``inverse`` (``inverse[order[k]] = k``, e.g. :func:`dimlab.models.scan_order.inverse_permutation`) the
    backward gathers by it; without, it is ``index_select`` and its scatter backward. ``inverse`` is trusted to be
    the inverse (the index plans build both once per grid; the tests check them).
    """
    if inverse is None:
        return x.index_select(1, order)
    return _PermuteTokens.apply(x, order, inverse)
