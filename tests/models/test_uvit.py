"""Tests for the U-ViT baseline: shapes, conditioning, resizing, checkpointing and published parameter counts."""

from __future__ import annotations

import pytest
import torch

from dimlab.models.layers import resize_pos_embed, timestep_sinusoid
from dimlab.models.presets import UVIT_PRESETS, build_backbone
from dimlab.models.uvit import UViT
from tiny_models import tiny_uvit

#: What these tests change in the tiny recipe: 3 channels, 5 blocks, 4 heads, 10 classes.
TINY = dict(in_channels=3, depth=5, num_heads=4, num_classes=10)

# Published sizes in millions ("44M", "287M", "501M" in the U-ViT paper's configuration table) and the exact
# counts of this implementation (recorded in docs/uvit.md). The exact ones were derived by hand from the
# architecture: 12D^2 + 10D per block, (2D^2 + D) per skip linear, plus embeddings and head.
PUBLISHED_MILLIONS = {"uvit_s2": 44, "uvit_l2": 287, "uvit_h2": 501, "uvit_h4_512": 501}
EXACT_COUNTS = {
    "uvit_s2": 44_255_328,
    "uvit_l2": 286_763_172,
    "uvit_h2": 500_832_016,
    "uvit_h2_512": 501_716_752,
    "uvit_h4_512": 500_942_656,
}


def _tiny(**overrides) -> UViT:
    torch.manual_seed(0)
    return tiny_uvit(**{**TINY, **overrides})


def _analytic_count(kw: dict) -> int:
    """Parameter count from the architecture description, independent of the module code."""
    d, n, c, p = kw["hidden_size"], kw["depth"], kw["in_channels"], kw["patch_size"]
    classes = kw["num_classes"]
    grid = (kw["input_size"] // p) ** 2
    total = n * (12 * d * d + 10 * d) + (n // 2) * (2 * d * d + d)
    total += ((2 if classes else 1) + grid) * d  # pos-embed
    total += c * p * p * d + d  # patch conv
    total += 2 * d + d * p * p * c + p * p * c  # final norm + decoder_pred
    total += (c * c * 9 + c) if kw["use_final_conv"] else 0
    total += (classes + 1) * d if classes else 0
    return total


@pytest.mark.parametrize("num_classes", [10, 0])
def test_tiny_forward_backward_shapes_and_finite(num_classes):
    model = _tiny(num_classes=num_classes)
    x = torch.randn(3, 3, 8, 8)
    t = torch.rand(3) * 999
    y = torch.tensor([0, 5, 10]) if num_classes else None
    out = model(x, t, y)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), (
        "every parameter gets a gradient"
    )
    assert grads["pos_embed"].abs().sum() > 0


def test_out_channels_and_scalar_time():
    model = _tiny(out_channels=6, use_final_conv=True).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out = model(x, 0.5)
        torch.testing.assert_close(model(x, torch.tensor(0.5)), out)
        torch.testing.assert_close(model(x, torch.tensor([0.5, 0.5])), out)
    assert out.shape == (2, 6, 8, 8)


def test_class_conditioning_changes_output_and_none_means_null():
    model = _tiny().eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10.0, 500.0])
    with torch.no_grad():
        cond = model(x, t, torch.tensor([3, 7]))
        null = model(x, t, torch.full((2,), 10))
        default = model(x, t)
    assert not torch.allclose(cond, null)
    torch.testing.assert_close(default, null)


def test_unconditional_ignores_labels():
    model = _tiny(num_classes=0).eval()
    assert model.label_emb is None and model.pos_embed.shape[1] == 1 + 16
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, torch.tensor([1, 2])), model(x, t))


def test_time_changes_output():
    model = _tiny().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(model(x, torch.tensor([1.0, 1.0])), model(x, torch.tensor([900.0, 900.0])))


def test_rectangular_inputs_use_resized_pos_embed():
    model = _tiny().eval()
    x = torch.randn(2, 3, 12, 6)
    with torch.no_grad():
        out = model(x, torch.tensor([3.0, 4.0]), torch.tensor([1, 2]))
    assert out.shape == (2, 3, 12, 6)
    assert torch.isfinite(out).all()


def test_resize_pos_embed_keeps_extras_and_is_identity_on_same_grid():
    table = torch.randn(1, 2 + 4 * 4, 8)
    assert resize_pos_embed(table, (4, 4), (4, 4), 2) is table
    resized = resize_pos_embed(table, (4, 4), (8, 2), 2)
    assert resized.shape == (1, 2 + 16, 8)
    torch.testing.assert_close(resized[:, :2], table[:, :2])
    # A constant grid stays constant under bilinear resizing.
    const = torch.cat([table[:, :2], torch.full((1, 16, 8), 0.25)], dim=1)
    torch.testing.assert_close(
        resize_pos_embed(const, (4, 4), (6, 10), 2)[:, 2:], torch.full((1, 60, 8), 0.25)
    )
    with pytest.raises(ValueError, match="expected 2 extra"):
        resize_pos_embed(table, (5, 5), (4, 4), 2)


def test_bad_input_size_is_a_clear_error():
    model = _tiny()
    with pytest.raises(ValueError, match=r"9x8 is not a multiple of patch_size 2"):
        model(torch.randn(1, 3, 9, 8), torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 4, 8, 8), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="t must be a scalar"):
        model(torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="depth must be a positive odd"):
        tiny_uvit(**{**TINY, "depth": 4})
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        tiny_uvit(**{**TINY, "num_heads": 5})


def test_gradient_checkpointing_gives_same_gradients():
    plain = _tiny()
    ckpt = _tiny(gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([5.0, 50.0]), torch.tensor([1, 10])
    for model in (plain, ckpt):
        model(x, t, y).square().mean().backward()
    for (name, p_plain), (_, p_ckpt) in zip(plain.named_parameters(), ckpt.named_parameters(), strict=True):
        torch.testing.assert_close(p_ckpt.grad, p_plain.grad, msg=f"gradient of {name} differs")


def test_no_skip_variant_has_no_skip_linears():
    model = _tiny(skip=False)
    assert all(blk.skip_linear is None for blk in model.out_blocks)
    assert model(torch.randn(1, 3, 8, 8), 1.0).shape == (1, 3, 8, 8)


def test_no_weight_decay_names():
    model = _tiny(mlp_time_embed=True)
    names = model.no_weight_decay_names()
    params = dict(model.named_parameters())
    assert names <= set(params)
    assert {
        "pos_embed",
        "norm.weight",
        "norm.bias",
        "in_blocks.0.norm1.weight",
        "mid_block.attn.proj.bias",
    } <= names
    assert "out_blocks.0.skip_linear.bias" in names and "time_embed.0.bias" in names
    decayed = set(params) - names
    assert {"in_blocks.0.attn.qkv.weight", "decoder_pred.weight", "label_emb.weight"} <= decayed
    assert not any(n.endswith(".bias") for n in decayed)


def test_init_follows_uvit():
    model = _tiny()
    assert model.decoder_pred.bias.abs().max() == 0
    assert model.in_blocks[0].norm1.weight.eq(1).all()
    std = model.in_blocks[0].mlp.fc1.weight.std().item()
    assert 0.015 < std < 0.025
    assert 0.01 < model.pos_embed.std().item() < 0.03


def test_timestep_sinusoid_matches_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 1.5, 999.0])
    for dim in (16, 17):
        expected = get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        torch.testing.assert_close(timestep_sinusoid(t, dim), expected)


@pytest.mark.parametrize("name", sorted(UVIT_PRESETS))
def test_preset_parameter_counts(name):
    with torch.device("meta"):
        model = build_backbone(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == _analytic_count(UVIT_PRESETS[name])
    assert count == EXACT_COUNTS[name]
    if name in PUBLISHED_MILLIONS:
        assert round(count / 1e6) == PUBLISHED_MILLIONS[name]


def test_build_backbone_uvit_overrides_and_unknown_name():
    with torch.device("meta"):
        model = build_backbone("uvit_l2", depth=3, gradient_checkpointing=True)
    assert len(model.in_blocks) == 1 and model.gradient_checkpointing
    with pytest.raises(KeyError, match="uvit_s2"):
        build_backbone("uvit_xl")


def test_full_size_uvit_s2_forward():
    torch.manual_seed(0)
    model = build_backbone("uvit_s2").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32), torch.tensor([500.0]))
    assert out.shape == (1, 3, 32, 32)
    assert torch.isfinite(out).all()


def test_bf16_autocast_and_bf16_weights():
    model = _tiny(mlp_time_embed=True)
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0]), torch.tensor([0, 3])
    with torch.no_grad():
        reference = model(x, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(x, t, y)
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed.float(), reference, atol=0.1, rtol=0.1)
    mixed.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    bf16 = model.to(torch.bfloat16)
    with torch.no_grad():
        assert bf16(x.bfloat16(), t, y).dtype == torch.bfloat16
