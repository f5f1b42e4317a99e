"""The module paths of the first release that moved still import, for one release, and hand on the same objects."""

from __future__ import annotations

import importlib

import pytest

# (old module, name, new module)
MOVED = [
    ("dimlab", "load_backbone", "dimlab.models.checkpoint"),
    ("dimlab.cli", "DimlabCLI", "dimlab.commands.fit"),
    ("dimlab.cli", "main", "dimlab.commands.main"),
    ("dimlab.demo", "score_checkpoint", "dimlab.demos.digits"),
    ("dimlab.demo", "main", "dimlab.demos.digits"),
    ("dimlab.highres.finetune_demo", "run_demo", "dimlab.demos.finetune"),
    ("dimlab.highres.check_finetune_inputs", "check_finetune_inputs", "dimlab.commands.check_finetune"),
    ("dimlab.highres.check_finetune_inputs", "main", "dimlab.commands.check_finetune"),
    ("dimlab.lit.sampling", "load_sampler", "dimlab.sampling.sampler"),
    ("dimlab.lit.sampling", "Sampler", "dimlab.sampling.sampler"),
    ("dimlab.lit.sampling", "per_sample_noise", "dimlab.sampling.sampler"),
    ("dimlab.lit.sampling", "upsample_factor", "dimlab.sampling.sampler"),
    ("dimlab.lit.sample_cli", "save_grid", "dimlab.sampling.images"),
    ("dimlab.lit.sample_cli", "to_uint8_hwc", "dimlab.sampling.images"),
    ("dimlab.lit.wandb_logging", "WandbSaveConfigCallback", "dimlab.lit.wandb_config"),
    ("dimlab.lit.wandb_logging", "wait_for_offline_run", "dimlab.lit.wandb_offline"),
    ("dimlab.lit.wandb_logging", "read_offline_run", "dimlab.lit.wandb_offline"),
    ("dimlab.models.convert", "load_backbone", "dimlab.models.checkpoint"),
    ("dimlab.models.convert", "load_weights_adapting", "dimlab.models.checkpoint"),
    ("dimlab.models.convert", "read_backbone_file", "dimlab.models.checkpoint"),
    ("dimlab.models.convert", "backbone_checkpoint", "dimlab.models.checkpoint"),
    ("dimlab.models.convert", "convert_official_state_dict", "dimlab.models.official"),
    ("dimlab.models.convert", "infer_official_config", "dimlab.models.official"),
    ("dimlab.models.norm", "RMSNorm", "dimlab.models.layers"),
    ("dimlab.models.dim", "resize_pos_embed", "dimlab.models.layers"),
    ("dimlab.models.dim", "timestep_sinusoid", "dimlab.models.layers"),
    ("dimlab.models.uvit", "UVIT_PRESETS", "dimlab.models.presets"),
    ("dimlab.eval.quantize", "to_uint8", "dimlab.data.transforms"),
]


@pytest.mark.parametrize(("old", "name", "new"), MOVED, ids=[f"{o}.{n}" for o, n, _ in MOVED])
def test_old_path_hands_on_the_moved_object(old, name, new):
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


def test_old_scorer_string_of_the_digits_matrix_still_resolves():
    from dimlab.ablation.matrix import Scorer

    assert (
        Scorer("dimlab.demo.score_checkpoint").resolve()
        is Scorer("dimlab.demos.digits.score_checkpoint").resolve()
    )
