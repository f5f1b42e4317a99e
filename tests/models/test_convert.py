"""Official <-> dimlab conversion, config inference, the backbone file format, load_backbone and the command."""

from __future__ import annotations

import json

import pytest
import torch

from dimlab.commands.convert_official import main
from dimlab.models.checkpoint import backbone_checkpoint, load_backbone, load_weights_adapting
from dimlab.models.dim import DiM
from dimlab.models.layers import resize_pos_embed
from dimlab.models.official import (
    convert_official_state_dict,
    dimlab_to_official,
    infer_official_config,
    official_to_dimlab,
)
from dimlab.models.presets import DIM_PARAM_COUNTS, DIM_PRESETS
from dimlab.models.spec import backbone_spec
from tiny_models import tiny_dim

OFFICIAL_TO_PRESET = {
    "cifar10_S_DiM": "dim_s2",
    "imagenet256_L_DiM": "dim_l2",
    "imagenet256_H_DiM": "dim_h2",
    "imagenet512_H_DiM_ft": "dim_h2_512",
}
REAL_LIMIT = 1_000_000  # tensors above this many elements are meta tensors, to keep L/H fast and small

#: What these tests change in the tiny recipe: 2 channels, 5 blocks, 3 classes.
TINY = dict(in_channels=2, depth=5, num_classes=3)


@pytest.fixture
def official_shapes(shared_spec):
    return json.loads((shared_spec / "official-state-dict-shapes.json").read_text())


def _synthetic(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        numel = torch.Size(shape).numel()
        out[name] = (
            torch.randn(shape, generator=g) if numel <= REAL_LIMIT else torch.empty(shape, device="meta")
        )
    return out


@pytest.mark.parametrize("config", list(OFFICIAL_TO_PRESET))
def test_official_state_dicts_convert_load_and_round_trip(official_shapes, config):
    official = _synthetic(official_shapes[config])
    init_args, converted = convert_official_state_dict(official)
    preset = DIM_PRESETS[OFFICIAL_TO_PRESET[config]]
    assert {k: init_args[k] for k in preset} == preset
    assert init_args["multi_scan"] == 4 and init_args["long_skip"] and init_args["local_enhance"]
    assert init_args["line_pad"] and init_args["cond_separator"]
    assert init_args["skip_fusion"] == ("concat" if preset["hidden_size"] <= 512 else "sum")
    assert len(converted) == len(official)  # every key mapped, nothing dropped or invented

    with torch.device("meta"):
        model = DiM(**init_args)
    assert sum(p.numel() for p in model.parameters()) == DIM_PARAM_COUNTS[OFFICIAL_TO_PRESET[config]]
    model.load_state_dict(converted, strict=True, assign=True)
    for name, tensor in model.state_dict().items():
        assert tensor.shape == converted[name].shape

    back = dimlab_to_official(converted)
    assert set(back) == set(official)
    for name, tensor in official.items():
        assert back[name].shape == tensor.shape, name
        if tensor.is_meta:
            assert back[name] is tensor, name  # pure renaming: the very same tensor object
        else:
            assert torch.equal(back[name], tensor), name


def test_infer_pad_fill(official_shapes):
    sd256 = {k: torch.empty(v, device="meta") for k, v in official_shapes["imagenet256_H_DiM"].items()}
    sd512 = {k: torch.empty(v, device="meta") for k, v in official_shapes["imagenet512_H_DiM_ft"].items()}
    assert infer_official_config(sd256)["pad_fill"] == "lateral"
    assert infer_official_config(sd512)["pad_fill"] == "rho_pad"
    assert infer_official_config(sd512, pad_fill="lateral")["pad_fill"] == "lateral"
    assert infer_official_config({"module." + k: v for k, v in sd256.items()})["hidden_size"] == 1536


def _tiny_official(**overrides) -> tuple[DiM, dict[str, torch.Tensor]]:
    torch.manual_seed(3)
    model = tiny_dim(**{**TINY, **overrides})
    with torch.no_grad():
        model.pos_embed.normal_()  # make every tensor non-trivial
    return model, dimlab_to_official(model.state_dict())


def test_tiny_model_conversion_reproduces_outputs_exactly():
    model, official = _tiny_official()
    assert "a4m_adapter.pad_token" in official and official["a4m_adapter.pad_token"].shape == (1, 32, 3)
    assert "transformer_blocks.3.skip_linear.weight" in official
    init_args, converted = convert_official_state_dict(official)
    rebuilt = DiM(**init_args)
    rebuilt.load_state_dict(converted, strict=True)
    x, t, y = torch.randn(2, 2, 8, 8), torch.tensor([10.0, 900.0]), torch.tensor([0, 3])
    with torch.no_grad():
        assert torch.equal(rebuilt(x, t, y), model(x, t, y))


def test_switched_off_components_are_inferred():
    _, official = _tiny_official(long_skip=False, line_pad=False, cond_separator=False, local_enhance=False)
    init_args = infer_official_config(official)
    assert not init_args["long_skip"] and not init_args["line_pad"] and not init_args["cond_separator"]
    assert not init_args["local_enhance"]
    assert init_args["depth"] == 5 and init_args["d_state"] == 4 and init_args["expand"] == 2


def test_missing_and_unknown_keys_are_clear_errors():
    _, official = _tiny_official()
    broken = dict(official)
    del broken["transformer_blocks.2.attn1.A_log"], broken["norm_out.norm.weight"]
    with pytest.raises(ValueError, match=r"missing 2 key\(s\).*blocks\.2\.mixer\.A_log.*final_norm\.weight"):
        convert_official_state_dict(broken)
    with pytest.raises(ValueError, match="not an official DiM state dict: missing"):
        infer_official_config({"label_emb.weight": torch.zeros(4, 32)})
    with pytest.raises(ValueError, match="transformer_blocks.0.attn1.weird"):
        official_to_dimlab({**official, "transformer_blocks.0.attn1.weird": torch.zeros(1)})
    with pytest.raises(ValueError, match="no official DiM counterpart"):
        dimlab_to_official({"blocks.0.something": torch.zeros(1)})


def test_load_weights_adapting_resizes_pos_embed_256_to_512():
    small, _ = _tiny_official()
    big = tiny_dim(**{**TINY, "input_size": 16})
    report = load_weights_adapting(big, small.state_dict())
    assert report.resized == ["pos_embed"]
    assert not report.newly_initialised and not report.unexpected
    assert len(report.copied) == len(small.state_dict()) - 1
    expected = resize_pos_embed(small.pos_embed.detach(), (4, 4), (8, 8))
    assert torch.equal(big.pos_embed.detach(), expected)
    assert torch.equal(big.blocks[2].mixer.in_proj.weight, small.blocks[2].mixer.in_proj.weight)


def test_load_weights_adapting_rejects_other_mismatches_and_reports_new_keys():
    small, _ = _tiny_official()
    wide = tiny_dim(**{**TINY, "hidden_size": 48})
    with pytest.raises(
        ValueError, match=r"patch_embed\.weight: expected \(48, 2, 2, 2\), got \(32, 2, 2, 2\)"
    ):
        load_weights_adapting(wide, small.state_dict())
    no_pads = {k: v for k, v in small.state_dict().items() if k != "line_pad_tokens"}
    target = tiny_dim(**TINY)
    report = load_weights_adapting(target, {**no_pads, "extra.weight": torch.zeros(1)})
    assert report.newly_initialised == ["line_pad_tokens"] and report.unexpected == ["extra.weight"]


def test_cli_round_trip_and_load_backbone(tmp_path):
    model, official = _tiny_official(pad_fill="lateral")
    src = tmp_path / "nnet_ema.pth"
    torch.save(official, src)
    dst = tmp_path / "dim_tiny.pt"
    assert main(["convert-official", str(src), str(dst)]) == 0
    saved = torch.load(dst, weights_only=True)
    assert saved["dimlab_backbone"]["class_path"] == "dimlab.models.dim.DiM"
    assert "nnet_ema.pth" in saved["source"]
    loaded = load_backbone(dst)
    x, t = torch.randn(1, 2, 8, 8), torch.tensor([321.0])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model(x, t))
    back = tmp_path / "back.pth"
    assert main([str(dst), str(back), "--reverse"]) == 0
    restored = torch.load(back, weights_only=True)
    assert set(restored) == set(official)
    assert all(torch.equal(restored[k], official[k]) for k in official)


def test_load_backbone_reads_training_checkpoints_and_prefers_ema(tmp_path):
    raw = tiny_dim(**TINY)
    torch.manual_seed(11)
    ema = tiny_dim(**TINY)
    ckpt = {
        "dimlab_backbone": backbone_spec(raw),
        "state_dict": {
            **{"backbone." + k: v for k, v in raw.state_dict().items()},
            "ema_step": torch.tensor(1),
        },
        "ema_backbone": ema.state_dict(),
    }
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    x, t = torch.randn(1, 2, 8, 8), torch.tensor([5.0])
    with torch.no_grad():
        assert torch.equal(load_backbone(path)(x, t), ema(x, t))
        assert torch.equal(load_backbone(path, ema=False)(x, t), raw(x, t))
        grown = load_backbone(path, input_size=16)
        assert grown.grid_size == (8, 8) and grown(torch.randn(1, 2, 16, 16), t).shape == (1, 2, 16, 16)
    torch.save(backbone_checkpoint(backbone_spec(raw)["init_args"], raw.state_dict(), "test"), path)
    with torch.no_grad():
        assert torch.equal(load_backbone(path)(x, t), raw(x, t))


def test_not_a_dimlab_file_is_a_clear_error(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="convert-official"):
        load_backbone(path)
