"""The DiM backbone: shapes, conditioning, pads, scans, skips, switches, init, sizes (docs/backbone.md)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from dimlab.models.dim import DiM
from dimlab.models.layers import resize_pos_embed
from dimlab.models.scan_order import PaddedGrid, scan_permutation, skip_pairs
from tiny_models import tiny_dim

#: What these tests change in the tiny recipe: 2 channels, 7 blocks (3 skip pairs), 3 classes.
TINY = dict(in_channels=2, depth=7, num_classes=3)


def _tiny(**overrides) -> DiM:
    torch.manual_seed(0)
    return tiny_dim(**{**TINY, **overrides})


def _inputs(batch=2, height=8, width=8, channels=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=g)
    t = torch.rand(batch, generator=g) * 999
    y = torch.randint(0, 3, (batch,), generator=g)
    return x, t, y


def test_forward_shape_and_finite():
    model = _tiny()
    x, t, y = _inputs()
    out = model(x, t, y)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert _tiny(out_channels=5)(x, t, y).shape == (2, 5, 8, 8)


def test_scalar_timestep_broadcasts():
    model = _tiny()
    x, _, y = _inputs()
    assert torch.allclose(model(x, 500.0, y), model(x, torch.full((2,), 500.0), y))


def test_class_condition_changes_output_and_none_is_null_class():
    model = _tiny()
    x, t, y = _inputs()
    with torch.no_grad():
        cond = model(x, t, y)
        null = model(x, t)
        explicit_null = model(x, t, torch.full((2,), model.num_classes))
    assert torch.equal(null, explicit_null)
    assert not torch.allclose(cond, null)


def test_rectangular_inputs_with_column_scans():
    model = _tiny(multi_scan=4)
    assert "col_forward" in model.schedule and "col_backward" in model.schedule
    for height, width in [(8, 12), (12, 6), (4, 10)]:
        x, t, y = _inputs(height=height, width=width)
        out = model(x, t, y)
        assert out.shape == (2, 2, height, width) and torch.isfinite(out).all()
    rect = _tiny(input_size=(6, 10))
    assert rect.grid_size == (3, 5) and rect.pos_embed.shape[1] == 2 + 15
    x, t, y = _inputs(height=6, width=10)
    assert rect(x, t, y).shape == (2, 2, 6, 10)


@pytest.mark.parametrize(("height", "width"), [(9, 8), (8, 7), (1, 8)])
def test_bad_size_is_a_clear_error(height, width):
    model = _tiny()
    x, t, y = _inputs(height=height, width=width)
    with pytest.raises(ValueError, match=rf"{height}x{width}.*patch_size 2.*multiples of 2"):
        model(x, t, y)


def test_bad_channels_and_constructor_args_are_clear_errors():
    x, t, y = _inputs(channels=3)
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        _tiny()(x, t, y)
    with pytest.raises(ValueError, match="patch_size"):
        tiny_dim(**{**TINY, "input_size": 9})
    with pytest.raises(ValueError, match="pad_fill"):
        tiny_dim(**{**TINY, "pad_fill": "zigzag"})
    with pytest.raises(ValueError, match="skip_fusion"):
        tiny_dim(**{**TINY, "skip_fusion": "gated"})
    with pytest.raises(ValueError, match="odd"):
        tiny_dim(**{**TINY, "depth": 4})


def _capture_block0_input(model: DiM, x, t, y) -> torch.Tensor:
    captured = {}

    def hook(_module, args):
        captured["h"] = args[0].detach().clone()

    handle = model.blocks[0].register_forward_pre_hook(hook)
    with torch.no_grad():
        model(x, t, y)
    handle.remove()
    return captured["h"]


@pytest.mark.parametrize("fill", ["lateral", "rho_pad"])
def test_pad_and_separator_placement_in_the_sequence(fill):
    model = _tiny(pad_fill=fill, input_size=(6, 8))
    x, t, y = _inputs(height=6, width=8)
    h = _capture_block0_input(model, x, t, y)
    grid = PaddedGrid(3, 4, 3)
    assert h.shape == (2, 2 + 3 + grid.num_tokens, 32)
    assert h.dtype == torch.float32  # the residual stream is fp32
    assert torch.equal(h[0, 2:5], model.separator_tokens.detach())
    token_map = grid.token_map(fill).flatten()
    grid_part = h[:, 5:]
    for pos in range(grid.num_tokens):
        k = int(token_map[pos])
        if k < 0:
            assert torch.equal(grid_part[1, pos], model.line_pad_tokens.detach()[k + 3]), (fill, pos)
    # image tokens sit row-major at the non-pad positions: compare with a model whose pads are off
    image_positions = grid.image_positions()
    nopad = _tiny(pad_fill=fill, input_size=(6, 8), line_pad=False, cond_separator=False)
    nopad.load_state_dict(model.state_dict(), strict=False)
    h_nopad = _capture_block0_input(nopad, x, t, y)
    assert torch.equal(grid_part[:, image_positions], h_nopad[:, 2:])
    assert torch.equal(h[:, :2], h_nopad[:, :2])


def test_model_plan_aligns_every_skip_with_the_receiving_order():
    """Position ids through the model's own plan: skip tensors arrive in the receiver's incoming order."""
    model = _tiny(depth=9, input_size=(6, 10))
    plan = model.index_plan((3, 5))
    ids = torch.arange(plan.assemble.max().item() + 1)[plan.assemble]
    outputs = []
    for b in range(model.depth):
        if plan.transitions[b] is not None:
            ids = ids[plan.transitions[b]]
        outputs.append(ids)
    for src, dst in skip_pairs(model.depth):
        assert torch.equal(outputs[src], outputs[dst - 1])
    grid = PaddedGrid(3, 5, 3)
    for b, pattern in enumerate(model.schedule):
        order = scan_permutation(pattern, grid.padded_height, grid.padded_width)
        assert torch.equal(outputs[b][5:], plan.assemble[5:][order])  # the grid in this block's scan order
        assert torch.equal(outputs[b][:5], torch.arange(5))  # cond + separators always first
    assert torch.equal(outputs[-1][plan.extract], torch.arange(5, 5 + 15))
    assert model.index_plan((3, 5)) is plan  # cached per grid


def _param_names(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters()}


COMBOS = list(itertools.product([1, 4], [True, False], [True, False], [True, False]))


@pytest.mark.parametrize(("multi_scan", "long_skip", "pads", "local_enhance"), COMBOS)
def test_ablation_switches_build_run_and_train(multi_scan, long_skip, pads, local_enhance):
    model = _tiny(
        multi_scan=multi_scan,
        long_skip=long_skip,
        line_pad=pads,
        cond_separator=pads,
        local_enhance=local_enhance,
    )
    x, t, y = _inputs()
    out = model(x, t, y)
    assert out.shape == x.shape and torch.isfinite(out).all()
    (out.square().mean()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad
    names = _param_names(model)
    assert any("skip_fusion" in n for n in names) == long_skip
    assert ("line_pad_tokens" in names) == pads and ("separator_tokens" in names) == pads
    assert any(n.startswith("local_enhance") for n in names) == local_enhance
    assert set(model.schedule) == ({"row_forward"} if multi_scan == 1 else set(model.schedule))
    assert len(set(model.schedule)) == (1 if multi_scan == 1 else 4)
    full = sum(p.numel() for p in _tiny().parameters())
    count = sum(p.numel() for p in model.parameters())
    switched_off = (not long_skip) + (not pads) + (not local_enhance)
    assert (count < full) == (switched_off > 0) and count <= full


def test_line_pad_and_separator_are_independent():
    only_sep = _tiny(line_pad=False)
    only_pad = _tiny(cond_separator=False)
    assert "separator_tokens" in _param_names(only_sep) and "line_pad_tokens" not in _param_names(only_sep)
    assert "line_pad_tokens" in _param_names(only_pad) and "separator_tokens" not in _param_names(only_pad)
    x, t, y = _inputs()
    assert only_sep.index_plan((4, 4)).seq_len == 2 + 3 + 16
    assert only_pad.index_plan((4, 4)).seq_len == 2 + 49
    for model in (only_sep, only_pad):
        assert model(x, t, y).shape == x.shape


def test_skip_fusion_styles():
    concat = _tiny()
    assert concat.blocks[4].skip_fusion.mode == "concat"
    summed = _tiny(skip_fusion="sum")
    assert {n for n in _param_names(summed.blocks[4]) if "skip" in n} == {
        "skip_fusion.hidden_proj.weight",
        "skip_fusion.hidden_proj.bias",
        "skip_fusion.skip_proj.weight",
        "skip_fusion.skip_proj.bias",
    }
    wide = tiny_dim(**{**TINY, "hidden_size": 520, "depth": 3, "input_size": 4})
    assert wide.blocks[2].skip_fusion.mode == "sum"  # "auto": two summed linears above width 512
    assert wide.blocks[0].skip_fusion is None and wide.blocks[1].skip_fusion is None  # stem and source


def test_skip_scale():
    model = _tiny()
    assert model.num_skip_receivers == 3
    x, t, y = _inputs()
    with torch.no_grad():
        base = model(x, t, y)
        ones = model(x, t, y, skip_scale=torch.ones(3))
        per_sample = model(x, t, y, skip_scale=torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.5, 1.0]]))
        zeros = model(x, t, y, skip_scale=torch.zeros(3))
        broadcast = model(x, t, y, skip_scale=torch.tensor([[0.0, 0.5, 1.0]]))
    assert torch.equal(base, ones)
    assert torch.equal(per_sample[0], base[0]) and not torch.allclose(per_sample[1], base[1])
    assert not torch.allclose(zeros, base)
    assert torch.allclose(broadcast[1], per_sample[1])
    with pytest.raises(ValueError, match=r"\(3,\), \(1, 3\) or \(2, 3\)"):
        model(x, t, y, skip_scale=torch.ones(2))
    with pytest.raises(ValueError, match="long_skip=False"):
        _tiny(long_skip=False)(x, t, y, skip_scale=torch.ones(3))
    assert _tiny(long_skip=False).num_skip_receivers == 0


def test_gradient_checkpointing_matches_plain():
    plain = _tiny()
    ckpt = _tiny(gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t, y = _inputs()
    out_plain, out_ckpt = plain(x, t, y), ckpt(x, t, y)
    assert torch.allclose(out_plain, out_ckpt)
    out_plain.square().mean().backward()
    out_ckpt.square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


def test_position_table_resize_and_cache():
    model = _tiny()
    with torch.no_grad():
        model.pos_embed.normal_()
        first = model.pos_embed_for((6, 6))
        assert model.pos_embed_for((6, 6)) is first  # cached in inference
        assert torch.equal(first, resize_pos_embed(model.pos_embed, (4, 4), (6, 6)))
        assert torch.equal(first[:, :2], model.pos_embed[:, :2])
        model.pos_embed.add_(1.0)
        assert not torch.equal(model.pos_embed_for((6, 6)), first)  # in-place update invalidates
    assert model.pos_embed_for((4, 4)) is model.pos_embed
    constant = torch.full((1, 2 + 16, 3), 2.5)
    assert torch.allclose(resize_pos_embed(constant, (4, 4), (7, 5)), torch.full((1, 2 + 35, 3), 2.5))
    with pytest.raises(ValueError, match="rows"):
        resize_pos_embed(constant, (3, 3), (4, 4))


def test_initialisation_follows_reference():
    model = tiny_dim(**{**TINY, "hidden_size": 64, "depth": 9})
    assert torch.equal(model.pos_embed, torch.zeros_like(model.pos_embed))
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.bias is not None:
            if name.endswith("dt_proj"):
                assert module.bias.abs().sum() > 0, name  # softplus^-1 of dt, kept
            else:
                assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
    for table in (
        model.label_embed.weight,
        model.adaln.class_table.weight,
        model.adaln.timestep_mlp.linear_1.weight,
    ):
        assert 0.015 < table.std().item() < 0.025
    out_proj = model.blocks[0].mixer.out_proj.weight
    bound = 1 / math.sqrt(out_proj.shape[1]) / math.sqrt(model.depth)
    assert out_proj.abs().max() <= bound and out_proj.abs().max() > 0.8 * bound
    sst = torch.stack([b.scale_shift_table for b in model.blocks])
    assert 0.8 < sst.std().item() * math.sqrt(64) < 1.2
    assert torch.equal(model.blocks[0].norm.weight, torch.ones(64))
    assert 0.01 < model.line_pad_tokens.std().item() < 0.03


def test_no_weight_decay_names():
    model = _tiny()
    names = model.no_weight_decay_names()
    assert {"pos_embed", "line_pad_tokens", "separator_tokens", "label_embed.weight"} <= names
    assert {"blocks.0.norm.weight", "final_norm.weight", "adaln.class_table.weight"} <= names
    assert {
        "blocks.0.mixer.A_log",
        "blocks.0.mixer.D",
        "blocks.0.mixer.dt_proj.bias",
        "patch_embed.bias",
    } <= names
    assert "blocks.0.mixer.in_proj.weight" not in names and "final_proj.weight" not in names
    assert names <= _param_names(model)


def test_bf16_autocast_and_bf16_weights():
    model = _tiny()
    x, t, y = _inputs()
    with torch.no_grad():
        ref = model(x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t, y)
        assert torch.isfinite(low).all()
        assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max()
        h = _capture_block0_input(model.bfloat16(), x.bfloat16(), t, y)
        assert h.dtype == torch.float32  # bf16 weights, fp32 residual stream
        pure = model(x.bfloat16(), t, y)
    assert pure.dtype == torch.bfloat16
    assert (pure.float() - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.slow
def test_full_size_small_forward():
    """The official CIFAR S model (50.57 M parameters), one image, one forward."""
    torch.manual_seed(0)
    model = DiM()  # the defaults are the S/2 CIFAR configuration
    assert sum(p.numel() for p in model.parameters()) == 50_568_716
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model(x, torch.tensor([500.0]))
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
    assert model.index_plan((16, 16)).seq_len == 366


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_forward_matches_cpu_with_the_torch_scan():
    model = _tiny(scan_backend="torch")
    x, t, y = _inputs(height=8, width=12)
    with torch.no_grad():
        ref = model(x, t, y)
        out = model.cuda()(x.cuda(), t.cuda(), y.cuda())
    assert model.index_plan((4, 6), "cuda").assemble.is_cuda
    assert torch.allclose(out.cpu(), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.cuda_kernels
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernels_match_torch_scan_forward_and_backward():
    from dimlab.models.mamba import set_scan_backend

    model = _tiny().cuda()
    x, t, y = (v.cuda() for v in _inputs(height=8, width=12))
    results = []
    for backend in ("torch", "cuda"):
        set_scan_backend(model, backend)
        model.zero_grad()
        out = model(x, t, y)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (out_t, grads_t), (out_c, grads_c) = results
    assert torch.allclose(out_c, out_t, atol=1e-3, rtol=1e-3)
    for g_t, g_c in zip(grads_t, grads_c, strict=True):
        assert torch.allclose(g_c, g_t, atol=1e-3, rtol=1e-2)
