"""permute_tokens: the scan-order gather whose backward gathers by the inverse permutation."""

from __future__ import annotations

import torch

from dimlab.models.permute import permute_tokens
from dimlab.models.scan_order import inverse_permutation


def test_permute_tokens_gives_index_selects_values_and_gradients_by_gathering():
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(11, generator=g)
    x = torch.randn(3, 11, 5, generator=g, dtype=torch.float64, requires_grad=True)
    out = permute_tokens(x, order, inverse_permutation(order))
    ref = x.index_select(1, order)
    assert torch.equal(out, ref)
    grad_out = torch.randn(3, 11, 5, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    (grad_ref,) = torch.autograd.grad(ref, x, grad_out)
    assert torch.equal(grad, grad_ref)
    assert torch.autograd.gradcheck(lambda t: permute_tokens(t, order, inverse_permutation(order)), (x,))


def test_permute_tokens_traces_whole_under_compile():
    order = torch.tensor([2, 0, 3, 1])
    x = torch.randn(2, 4, 3, requires_grad=True)
    fn = torch.compile(
        lambda t: (permute_tokens(t, order, inverse_permutation(order)) * 2).sum(),
        backend="aot_eager",
        fullgraph=True,
    )
    (grad,) = torch.autograd.grad(fn(x), x)
    assert torch.equal(grad, torch.full_like(x, 2.0))
