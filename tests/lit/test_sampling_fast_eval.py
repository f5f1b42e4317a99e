"""Sampling precision and CUDA-graph replay (``dimlab.diffusion.fast_eval``) through :class:`dimlab.sampling.sampler.Sampler`.

CPU: bf16 autocast really applies and stays close to fp32; graphs are refused off CUDA with a clear message; a
compiled backbone (traced whole, at the trained and at a larger grid) gives the eager samples.
GPU (``gpu`` mark): graph replay equals eager sampling in fp32 and bf16, reuses its graphs for the next batch's
labels, and handles the two resolutions of upsample guidance.
"""

from __future__ import annotations

import pytest
import torch

from dimlab.diffusion.fast_eval import (
    CompiledNetwork,
    CudaGraphedModelFn,
    compile_backend,
    fast_model_fn,
    with_precision,
)
from dimlab.sampling.sampler import Sampler
from dimlab.sampling.spec import DiffusionSpec
from tiny_models import tiny_dim

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _sampler(device="cpu") -> Sampler:
    torch.manual_seed(0)
    backbone = tiny_dim()
    with torch.no_grad():  # the zero-initialised head would make every sample the same
        for p in backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return Sampler(
        backbone.to(device).eval(), DiffusionSpec("sd_discrete", latent_shape=(1, 8, 8), num_classes=4)
    )


def _draw(smp, labels=(0, 3), **kwargs):
    seeds = list(range(len(labels)))
    return smp.sample(list(labels), seeds, cfg_scale=1.0, steps=4, **kwargs)


def test_bf16_precision_runs_the_network_under_autocast_and_stays_close_to_fp32():
    sampler = _sampler()
    fp32 = _draw(sampler)
    bf16 = _draw(sampler, precision="bf16")
    assert bf16.dtype == torch.float32
    assert not torch.equal(bf16, fp32), "bf16 autocast changed nothing: it was not applied"
    # rounding, not a different sampler (single pixels may move more)
    assert (bf16 - fp32).abs().mean() < 0.02


def test_with_precision_returns_fp32_and_rejects_unknown_precisions():
    linear = torch.nn.Linear(4, 4)

    def fn(x, t):
        return linear(x)

    x = torch.randn(2, 4)
    assert with_precision(fn, "fp32", torch.device("cpu")) is fn
    out = with_precision(fn, "bf16", torch.device("cpu"))(x, torch.zeros(2))
    assert out.dtype == torch.float32 and not torch.equal(out, fn(x, None))
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        with_precision(fn, "fp16", torch.device("cpu"))


def test_cuda_graphs_are_refused_without_a_cuda_device():
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device, but the model is on cpu"):
        fast_model_fn(lambda x, t: x, torch.device("cpu"), cuda_graphs=True)
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        _draw(_sampler(), cuda_graphs=True)


def test_a_compiled_backbone_samples_what_the_eager_one_does_at_two_grids_and_with_skip_tune():
    """aot_eager traces the whole DiM (fullgraph: a break fails) without needing a C++ compiler on CI."""
    sampler = _sampler()
    for kwargs in ({}, {"latent_shape": (1, 12, 12)}, {"skip_tune": (0.8, 1.0)}):
        eager = _draw(sampler, **kwargs)
        compiled = _draw(sampler, compile="aot_eager", **kwargs)
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    (network,) = sampler._compiled.values()
    assert isinstance(network, CompiledNetwork) and network.backend == "aot_eager"
    # one traced graph per input shape (CFG doubles the batch), reused by later calls
    assert {key[0] for key in network._shapes} == {(4, 1, 8, 8), (4, 1, 12, 12)}


def test_compile_option_names_a_backend_or_is_refused():
    assert compile_backend(False) is None and compile_backend(True) == "inductor"
    assert compile_backend("aot_eager") == "aot_eager"
    with pytest.raises(
        ValueError, match="compile must be True, False or a torch.compile backend .*got 'yes'"
    ):
        compile_backend("yes")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_inductor_backbone_with_graph_replay_matches_eager_sampling(precision):
    sampler = _sampler("cuda")
    eager = _draw(sampler, precision=precision)
    fast = _draw(sampler, precision=precision, cuda_graphs=True, compile=True)
    if precision == "fp32":
        torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-4)
    else:  # Inductor rounds fused bf16 work once, eager after every op: rounding, not another network
        assert (fast - eager).abs().mean() < 0.02


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_graph_replay_equals_eager_sampling_and_is_reused_for_new_labels(precision):
    sampler = _sampler("cuda")
    eager = _draw(sampler, precision=precision)
    graphed = _draw(sampler, precision=precision, cuda_graphs=True)
    torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-5)
    (entry,) = sampler._graphed.values()
    graphs = entry[1].graphs
    assert len(graphs) == 1
    # the next batch: other labels, same shapes -> the same graph, with the new labels copied in
    eager_next = _draw(sampler, labels=(2, 1), precision=precision)
    graphed_next = _draw(sampler, labels=(2, 1), precision=precision, cuda_graphs=True)
    torch.testing.assert_close(graphed_next, eager_next, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(graphed_next, graphed), "the labels did not reach the replayed graph"
    assert len(sampler._graphed) == 1 and len(graphs) == 1


@pytest.mark.gpu
@requires_cuda
def test_graph_replay_with_upsample_guidance_captures_both_resolutions():
    sampler = _sampler("cuda")
    target = (1, 16, 16)
    kwargs = dict(latent_shape=target, sampler="dpm")
    eager = _draw(sampler, model_fn_wrapper=sampler.upsample_guidance(target), **kwargs)
    graphed = _draw(sampler, model_fn_wrapper=sampler.upsample_guidance(target), cuda_graphs=True, **kwargs)
    torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-5)
    (entry,) = sampler._graphed.values()
    shapes = sorted(key[0] for key in entry[1].graphs)
    assert shapes == [(2, 1, 8, 8), (2, 1, 16, 16)]  # the low-resolution branch and the target


def test_graphed_model_fn_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("checks the message on machines without CUDA")
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        CudaGraphedModelFn(lambda x, t: x)


def test_a_compiled_network_compiles_every_shape_asked_for():
    """More input shapes than Dynamo's default recompile limit (8; under fullgraph a hard error beyond it)."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 3)

        def forward(self, x, t, y=None):
            return self.linear(x) * t.view(-1, 1, 1)

    net = Net()
    compiled = CompiledNetwork(net, "aot_eager")
    for n in range(1, 12):
        x, t = torch.randn(2, n, 3), torch.rand(2)
        torch.testing.assert_close(compiled(x, t), net(x, t))
    assert len(compiled._shapes) == 11
