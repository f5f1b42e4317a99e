"""Meta-device parameter counts of matrix rows and the ``--dry-run`` table."""

from __future__ import annotations

from pathlib import Path

import pytest

from dimlab.ablation.matrix import load_matrix
from dimlab.ablation.params import build_backbone_on_meta, count_parameters
from dimlab.commands.ablate import main
from dimlab.models.presets import DIM_PARAM_COUNTS
from tiny_models import tiny_dim

from .conftest import TINY_DIM

REPO_ROOT = Path(__file__).resolve().parents[2]
AXES = {
    "multi_scan": [4, 1],
    "long_skips": [True, False],
    "padding_tokens": [True, False],
    "local_enhancement": [True, False],
}


def _eager_count(**flags) -> int:
    return sum(p.numel() for p in tiny_dim(**TINY_DIM, **flags).parameters())


def test_meta_count_matches_an_eagerly_built_backbone(experiment, write_matrix):
    matrix = load_matrix(write_matrix({"base": "../experiments/tiny.yaml", "axes": AXES, "design": "full"}))
    for row in matrix.rows[::5]:
        flags = {k.rsplit(".", 1)[1]: v for k, v in row.overrides.items()}
        assert count_parameters(row.base, row.overrides) == _eager_count(**flags), row.name
    backbone = build_backbone_on_meta(matrix.rows[0].base, matrix.rows[0].overrides)
    assert all(p.device.type == "meta" for p in backbone.parameters())


def test_removing_a_parameterised_component_lowers_the_count(experiment, write_matrix):
    matrix = load_matrix(
        write_matrix({"base": "../experiments/tiny.yaml", "axes": AXES, "design": "leave_one_out"})
    )
    counts = {row.name: count_parameters(row.base, row.overrides) for row in matrix.rows}
    for name in ("no_long_skips", "no_padding_tokens", "no_local_enhancement"):
        assert counts[name] < counts["full"], name
    # The scan order is a permutation: switching multi-directional scans off adds or removes nothing.
    assert counts["no_multi_scan"] == counts["full"]


def test_unbuildable_override_is_reported(experiment):
    with pytest.raises(ValueError, match="model.backbone cannot be built"):
        count_parameters(experiment, {"model.backbone.init_args.multi_scan": "four"})


def test_dry_run_prints_rows_and_counts_without_training(experiment, write_matrix, tmp_path, capsys):
    path = write_matrix(
        {
            "base": "../experiments/tiny.yaml",
            "output_dir": str(tmp_path / "out"),
            "axes": {"long_skips": [True, False]},
            "design": "leave_one_out",
            "overrides": {"trainer.max_steps": 3},
        }
    )
    assert main([str(path), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "full" in text and "no_long_skips" in text
    assert f"{_eager_count(long_skip=True):,}" in text
    assert f"{_eager_count(long_skip=False):,}" in text
    assert "--trainer.max_steps=3" in text
    assert not (tmp_path / "out").exists()


def test_invalid_matrix_exits_with_status_2_and_names_the_key(experiment, write_matrix, capsys):
    path = write_matrix(
        {"base": "../experiments/tiny.yaml", "axes": {"skip_connections": [True]}, "design": "full"}
    )
    assert main([str(path), "--dry-run"]) == 2
    assert "axes.skip_connections: unknown axis" in capsys.readouterr().out.replace("\n", "")


def test_cifar_matrix_full_row_is_the_official_dim_s2():
    path = REPO_ROOT / "ablations" / "cifar10.yaml"
    if not (REPO_ROOT / "experiments" / "cifar10" / "dim_s2.yaml").is_file():
        pytest.skip("experiments/cifar10/dim_s2.yaml not in the repo yet")
    matrix = load_matrix(path)
    full = matrix.row("full")
    assert count_parameters(full.base, full.overrides) == DIM_PARAM_COUNTS["dim_s2"]
    baseline = matrix.row("mamba_baseline")
    assert count_parameters(baseline.base, baseline.overrides) < DIM_PARAM_COUNTS["dim_s2"]
