"""Bad input fails early with a message naming the offending key, file or value.

Covered elsewhere, at the unit that raises (not repeated here):
* official checkpoint with missing / unknown keys: tests/models/test_convert.py::test_missing_and_unknown_keys_are_clear_errors
* tensor shape mismatches listed by load_weights_adapting: tests/models/test_convert.py::test_load_weights_adapting_rejects_other_mismatches_and_reports_new_keys
* shard paths / patterns / manifest mismatches: tests/data/test_datamodule.py::test_setup_errors_name_the_bad_input
* a label outside [0, num_classes) in a shard: tests/data/test_datamodule.py::test_label_out_of_range_raises_with_the_key
* missing Inception weights: tests/lit/test_fid_callback.py::test_missing_inception_weights_fail_before_the_first_step,
  tests/eval/test_eval_inception.py::test_explicit_missing_path_fails_with_instructions
* an ablation matrix with an unknown axis: tests/ablation/test_matrix.py::test_invalid_matrices_are_rejected_naming_the_key
Here the same kinds of mistakes go through the user-facing paths: ``dimlab fit`` (DimlabCLI), ``init_from``,
``--ckpt_path`` resume, and sampling.
"""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch
from reliability_cli import fit_args
from torch.utils.data import DataLoader, Dataset

from dimlab.commands.main import main
from dimlab.lit.module import DiffusionModule
from tiny_models import tiny_dim, tiny_trainer, tiny_uvit


def _cli_error(capsys, args) -> str:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_misspelt_config_keys_are_named(digits8, tmp_path, capsys):
    err = _cli_error(capsys, fit_args(digits8, tmp_path, "--model.lrr=1e-3"))
    assert "unrecognized arguments: --model.lrr=1e-3" in err

    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  warmup_step: 10\n")
    err = _cli_error(capsys, [*fit_args(digits8, tmp_path), "--config", str(typo)])
    assert "does not accept option 'model.warmup_step'" in err

    err = _cli_error(capsys, fit_args(digits8, tmp_path, "--model.backbone.class_path=dimlab.models.dim.DIM"))
    assert "dimlab.models.dim.DIM" in err and "has no attribute 'DIM'" in err

    err = _cli_error(capsys, fit_args(digits8, tmp_path, "--model.schedule=cosine"))
    assert "model.schedule" in err and "cosine" in err


def test_a_yaml_error_in_a_second_config_names_that_file(digits8, tmp_path, capsys):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("model:\n  betas: [0.9, 0.99\n  lr: 1e-3\n")
    err = _cli_error(capsys, [*fit_args(digits8, tmp_path), "--config", str(overlay)])
    assert f"--config {overlay}: not valid YAML at line 3, column 5: expected ',' or ']'" in err
    assert "<unicode string>" not in err


def test_image_size_not_a_multiple_of_the_patch_size(digits8, tmp_path):
    with pytest.raises(ValueError, match="input_size 8x8 must be a multiple of patch_size 3"):
        main(fit_args(digits8, tmp_path, "--model.backbone.init_args.patch_size=3"))
    model = tiny_dim()
    with pytest.raises(ValueError, match="DiM input size 10x9 is not a multiple of patch_size 2"):
        model(torch.zeros(1, 1, 10, 9), torch.zeros(1))


class _Images(Dataset):
    def __init__(self, shape, n: int = 8):
        self.x = torch.zeros(n, *shape)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": torch.tensor(i % 4)}


def test_data_resolution_that_disagrees_with_the_backbone(tmp_path):
    """A DiM runs at any multiple of its patch size, so this would otherwise train at the wrong resolution."""
    module = DiffusionModule(tiny_dim(), schedule="vp_sde", warmup_steps=0)  # built for (1, 8, 8)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    with pytest.raises(
        ValueError, match=re.escape("shape (1, 16, 16), but the model was built for (1, 8, 8)")
    ):
        trainer.fit(module, DataLoader(_Images((1, 16, 16)), batch_size=4))

    # latent space: VAE moments of a 40-pixel image (5x5) for a model of 4x4 latents (32-pixel images)
    latent = DiffusionModule(
        tiny_dim(input_size=4, in_channels=4),
        schedule="sd_discrete",
        vae_path=str(tmp_path / "unused-vae"),
        warmup_steps=0,
    )
    with pytest.raises(
        ValueError, match=r"32x32 pixels .* multiple of 8\) or VAE moments of shape \(8, 4, 4\)"
    ):
        latent.training_step({"x": torch.zeros(2, 8, 5, 5), "y": torch.tensor([0, 1])}, 0)


def _train_checkpoint(backbone, tmp_path, name: str):
    module = DiffusionModule(backbone, schedule="vp_sde", warmup_steps=0)
    trainer = tiny_trainer(tmp_path, max_steps=1)
    trainer.fit(module, DataLoader(_Images((1, 8, 8)), batch_size=4))
    path = tmp_path / name
    trainer.save_checkpoint(path)
    return path


def test_checkpoint_of_another_architecture_or_preset(tmp_path):
    dim_ckpt = _train_checkpoint(tiny_dim(), tmp_path, "dim.ckpt")
    uvit_ckpt = _train_checkpoint(tiny_uvit(), tmp_path, "uvit.ckpt")

    # init_from (fine-tuning): another architecture, then another width of the same one
    with pytest.raises(
        ValueError, match=r"uvit\.ckpt holds a dimlab\.models\.uvit\.UViT backbone, but model"
    ):
        DiffusionModule(tiny_dim(), schedule="vp_sde", init_from=str(uvit_ckpt))
    wider = tiny_dim(hidden_size=48)
    with pytest.raises(
        ValueError,
        match=r"\d+ tensor\(s\) do not match the model: .*'patch_embed.weight: expected \(48, 1, 2, 2\), got \(32, 1, 2, 2\)'",
    ):
        DiffusionModule(wider, schedule="vp_sde", init_from=str(dim_ckpt))

    # --ckpt_path resume into a deeper model: the missing and unexpected tensors are listed by name
    deeper = tiny_dim(depth=5)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: .*\"backbone\.blocks\.3\."):
        trainer.fit(
            DiffusionModule(deeper, schedule="vp_sde"),
            DataLoader(_Images((1, 8, 8)), batch_size=4),
            ckpt_path=str(dim_ckpt),
        )


def test_missing_vae_folder_fails_before_training(digits8, tmp_path):
    missing = tmp_path / "no-vae"
    with pytest.raises(FileNotFoundError, match=f"VAE folder {re.escape(str(missing))} not found"):
        main(fit_args(digits8, tmp_path, f"--model.vae_path={missing}", "--trainer.max_steps=1"))


def test_shard_pattern_matching_nothing_through_the_cli(digits8, tmp_path):
    pattern = str(tmp_path / "nowhere" / "train-*.tar")
    with pytest.raises(ValueError, match=f"train_shards={re.escape(pattern)}: pattern matched no shards"):
        main(fit_args(digits8, tmp_path, f"--data.train_shards={pattern}", "--trainer.max_steps=1"))


def test_class_label_out_of_range_when_sampling():
    module = DiffusionModule(tiny_dim(num_classes=4), schedule="vp_sde")
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 4\], got \[1, 7\]"):
        module.sampler().sample([1, 7], seeds=[0, 1], steps=2)


def test_latent_data_resolution_must_be_a_multiple_of_8():
    from dimlab.data.datamodule import ShardDataModule

    with pytest.raises(ValueError, match=r"resolution=260 with kind='latents': expected a multiple of 8"):
        ShardDataModule("unused", resolution=260, num_classes=10, kind="latents")
    ShardDataModule("unused", resolution=256, num_classes=10, kind="latents")  # fine
