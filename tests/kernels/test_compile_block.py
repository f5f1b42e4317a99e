"""torch.compile traces a whole DiM block on the Triton kernels without a graph break (issue 15: compile must be
able to fuse the norms, casts, gathers and pointwise work around the custom ops)."""

from __future__ import annotations

import torch
from kernel_cases import DEVICE, rel_err

from dimlab.models.dim import DiMBlock


def test_compile_traces_a_dim_block_without_graph_breaks(tiny_config):
    torch.manual_seed(5)
    block = DiMBlock(16, d_state=4, d_conv=3, expand=2, scan_backend="triton", skip_fusion="sum").to(DEVICE)
    h = torch.randn(2, 6, 16, device=DEVICE, requires_grad=True)
    skip = torch.randn(2, 6, 16, device=DEVICE)
    tmod = torch.randn(2, 48, device=DEVICE)
    order = torch.tensor([4, 2, 5, 0, 3, 1], device=DEVICE)
    inverse = torch.argsort(order)  # the backward of the scan-order gather gathers by it
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)  # fullgraph: a break is an error
    out = compiled(h, tmod, skip, order, inverse)
    eager = block(h, tmod, skip, order)
    assert rel_err(out, eager) < 1e-6
    (grad,) = torch.autograd.grad(out.square().sum(), h)
    (grad_eager,) = torch.autograd.grad(eager.square().sum(), h)
    assert rel_err(grad, grad_eager) < 1e-5


def test_compile_traces_a_whole_dim_from_its_first_call(tiny_config):
    """No eager warm-up: the index plan of the native grid exists before the first traced call."""
    from tiny_models import tiny_dim

    torch.manual_seed(6)
    model = tiny_dim(scan_backend="triton", depth=1).to(DEVICE)
    x, t, y = (
        torch.randn(2, 1, 8, 8, device=DEVICE),
        torch.tensor([3.0, 700.0], device=DEVICE),
        torch.tensor([1, 2]),
    )
    out = torch.compile(model, backend="aot_eager", fullgraph=True)(x, t, y.to(DEVICE))
    assert rel_err(out, model(x, t, y.to(DEVICE))) < 1e-6
