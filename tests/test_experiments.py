"""Every YAML under experiments/ parses through the CLI and instantiates (full size on the meta device)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dimlab.commands.fit import DimlabCLI
from dimlab.diffusion.dpm_solver import fast_orders
from dimlab.diffusion.samplers import SAMPLERS
from dimlab.lit.callbacks import SampleGrid
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


def _instantiate(path: Path, root: Path) -> DimlabCLI:
    args = [
        "--config",
        str(path),
        f"--trainer.default_root_dir={root}",
        "--trainer.logger=false",
        "--model.init_from=null",
    ]
    with torch.device("meta"):
        return DimlabCLI(args=args, run=False)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_experiment_instantiates(path, tmp_path):
    rel = str(path.relative_to(REPO / "experiments"))
    cli = _instantiate(path, tmp_path)
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


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_recipes_draw_a_sample_grid_every_n_steps_cheaply(path, tmp_path):
    """DiT / U-ViT users expect periodic grids: every recipe has one SampleGrid, at least four per run, whose
    settings are valid (a bad one would only fail at the first grid, hours in) and whose cost is small."""
    cli = _instantiate(path, tmp_path)
    (grid,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, SampleGrid)]
    assert 0 < grid.every_n_steps <= cli.trainer.max_steps // 4
    assert grid.sampler in SAMPLERS
    if grid.sampler in ("dpm++", "dpm"):
        fast_orders(grid.steps, order=3)
    module = cli.model
    labels = grid.labels(module)
    conditional = module.hparams.class_conditional
    if conditional and grid.classes is not None:
        assert all(0 <= c < module.num_classes for c in grid.classes)
    # network evaluations of one grid (CFG doubles them) against the training forward passes between two grids
    # (forward + backward ~ 3 forwards per image), both in images: at most 5%
    evaluations = len(labels) * grid.steps * (2 if conditional and grid.cfg_scale > 0 else 1)
    per_step = cli.datamodule.hparams.batch_size * cli.trainer.accumulate_grad_batches
    assert evaluations <= 0.05 * 3 * per_step * grid.every_n_steps, (
        evaluations,
        per_step,
        grid.every_n_steps,
    )
