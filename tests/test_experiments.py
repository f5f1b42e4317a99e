"""Every YAML under experiments/ parses through the CLI and instantiates (full size on the meta device)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dimlab.commands.fit import DimlabCLI
from dimlab.models.presets import DIM_PARAM_COUNTS

REPO = Path(__file__).resolve().parents[1]
# Overlays (experiments/overlays/*.yaml) are partial configs: tests/reliability instantiates them on a base.
EXPERIMENTS = sorted(p for p in (REPO / "experiments").rglob("*.yaml") if "overlays" not in p.parts)

EXPECTED_PARAMS = {
    "cifar10/dim_s2.yaml": DIM_PARAM_COUNTS["dim_s2"],
    "imagenet256/dim_l2.yaml": DIM_PARAM_COUNTS["dim_l2"],
    "imagenet256/dim_h2.yaml": DIM_PARAM_COUNTS["dim_h2"],
    "imagenet512/dim_h2_ft.yaml": DIM_PARAM_COUNTS["dim_h2_512"],
    "cifar10/uvit_s2.yaml": 44_255_328,
    "imagenet256/uvit_h2.yaml": 500_832_016,
}


def test_every_experiment_is_covered():
    names = {str(p.relative_to(REPO / "experiments")) for p in EXPERIMENTS}
    assert set(EXPECTED_PARAMS) | {"demo/digits.yaml"} == names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_experiment_instantiates(path, tmp_path):
    rel = str(path.relative_to(REPO / "experiments"))
    args = [
        "--config",
        str(path),
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        "--model.init_from=null",
    ]
    with torch.device("meta"):
        cli = DimlabCLI(args=args, run=False)
    backbone = cli.model.backbone
    count = sum(p.numel() for p in backbone.parameters())
    if rel in EXPECTED_PARAMS:
        assert count == EXPECTED_PARAMS[rel]
    assert cli.trainer.max_steps > 0
    data = cli.datamodule.hparams
    latent = cli.model.hparams.vae_path is not None
    assert (data.kind in ("images", "latents")) == latent, "latent-space models read images or moments"
    assert data.num_classes == (cli.model.num_classes or data.num_classes)
    assert cli.model.latent_shape[0] == (4 if latent else data.channels)
