"""The checked-in matrices: every row's exact ``dimlab fit`` arguments parse and build the intended backbone."""

from __future__ import annotations

from pathlib import Path

import pytest

from dimlab.ablation.matrix import load_matrix
from dimlab.ablation.params import count_parameters
from dimlab.ablation.runner import fit_command
from dimlab.commands.fit import DimlabCLI

REPO_ROOT = Path(__file__).resolve().parents[2]
FLAGS = ("multi_scan", "long_skip", "line_pad", "cond_separator", "local_enhance")


def _check_rows(matrix_name: str, row_names: list[str] | None, tmp_path: Path) -> None:
    matrix = load_matrix(REPO_ROOT / "ablations" / matrix_name, output_dir=tmp_path)
    rows = [matrix.row(n) for n in row_names] if row_names else matrix.rows
    for row in rows:
        argv = fit_command(matrix, row, tmp_path)
        assert argv[1:4] == ["-m", "dimlab", "fit"]
        cli = DimlabCLI(args=argv[4:], run=False)
        backbone = cli.model.backbone
        assert sum(p.numel() for p in backbone.parameters()) == count_parameters(row.base, row.overrides), (
            row.name
        )
        for flag in FLAGS:
            key = f"model.backbone.init_args.{flag}"
            if key in row.overrides:
                assert backbone.init_args[flag] == row.overrides[key], (row.name, flag)
        assert cli.trainer.max_steps == row.overrides["trainer.max_steps"]
        assert Path(cli.trainer.default_root_dir) == tmp_path / row.name


def test_digits_matrix_rows_parse(tmp_path):
    _check_rows("digits.yaml", None, tmp_path)


@pytest.mark.slow
def test_cifar_matrix_rows_parse(tmp_path):
    _check_rows("cifar10.yaml", ["full", "no_padding_tokens", "mamba_baseline", "uvit_s2"], tmp_path)
