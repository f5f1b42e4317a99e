"""W&B sweep emission: the file's structure and the agent's exact argument strings parsed by ``dimlab fit``."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.loggers import WandbLogger
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from dimlab.ablation.matrix import MatrixError, load_matrix
from dimlab.ablation.sweep import build_sweep
from dimlab.commands.ablate import main
from dimlab.commands.fit import DimlabCLI
from dimlab.models.dim import DiM
from tiny_models import tiny_dim

from .conftest import TINY_DIM

PREFIX = "model.backbone.init_args."
AXES = {
    "multi_scan": [4, 1],
    "long_skips": [True, False],
    "padding_tokens": [True, False],
    "local_enhancement": [True, False],
}


@pytest.fixture
def sweep_matrix(experiment, write_matrix, tmp_path):
    return write_matrix(
        {
            "name": "tiny",
            "base": "../experiments/tiny.yaml",
            "output_dir": str(tmp_path / "out"),
            "wandb": {"project": "dimlab-test", "mode": "offline"},
            "overrides": {"trainer.max_steps": 5, "model.betas": [0.9, 0.95]},
            "axes": AXES,
            "design": "leave_one_out",
            "extra_rows": [{"name": "baseline", "multi_scan": 1}],
            "metrics": ["fid/fid"],
        }
    )


def test_sweep_file_structure(sweep_matrix, tmp_path, experiment, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sweep.yaml"
    assert main([str(sweep_matrix), "--emit-sweep", str(out), "--set", "data.batch_size=4"]) == 0
    sweep = yaml.safe_load(out.read_text())
    assert sweep["method"] == "grid"
    assert sweep["project"] == "dimlab-test"
    assert sweep["metric"] == {"name": "fid/fid", "goal": "minimize"}
    assert sweep["command"] == [
        "${env}",
        "python",
        "-m",
        "dimlab",
        "fit",
        "--config",
        "experiments/tiny.yaml",
        "${args}",
    ]
    params = sweep["parameters"]
    assert params[PREFIX + "multi_scan"] == {"values": [4, 1]}
    for flag in ("long_skip", "line_pad", "cond_separator", "local_enhance"):
        assert params[PREFIX + flag] == {"values": [True, False]}, flag
    assert params["trainer.max_steps"] == {"value": 5}
    assert params["data.batch_size"] == {"value": 4}
    assert params["trainer.logger"] == {"value": "lightning.pytorch.loggers.WandbLogger"}
    assert "config" in params


def test_null_override_cannot_go_through_a_sweep(experiment, write_matrix):
    matrix = load_matrix(
        write_matrix(
            {"base": "../experiments/tiny.yaml", "design": "full", "axes": AXES, "overrides": {"x": None}}
        )
    )
    with pytest.raises(MatrixError, match="overrides.x: null cannot go through a W&B sweep"):
        build_sweep(matrix)


def _agent_argv(sweep: dict, choice: dict) -> list[str]:
    """What the W&B agent runs after ``python -m dimlab fit``, built by wandb's own argument formatter."""
    values = {k: {"value": choice.get(k, spec.get("value"))} for k, spec in sweep["parameters"].items()}
    flags = create_sweep_command_args({"args": values})["args"]
    command = sweep["command"]
    start = command.index("fit") + 1
    argv = []
    for item in command[start:]:
        argv += flags if item == "${args}" else [item]
    return argv


@pytest.mark.parametrize("combo", [0, 6, 15])
def test_agent_arguments_build_the_intended_backbone(sweep_matrix, tmp_path, monkeypatch, combo):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_RUN_ID", f"run{combo}")
    matrix = load_matrix(sweep_matrix)
    sweep, _ = build_sweep(matrix)
    flag_keys = [k for k, spec in sweep["parameters"].items() if "values" in spec]
    grid = list(itertools.product(*(sweep["parameters"][k]["values"] for k in flag_keys)))
    assert len(grid) == 32
    choice = dict(zip(flag_keys, grid[combo * 2 + 1], strict=True))
    argv = _agent_argv(sweep, choice)
    # The agent writes Python booleans: this is the exact form that must parse.
    assert f"--{PREFIX}long_skip={choice[PREFIX + 'long_skip']}" in argv
    assert any(a in argv for a in (f"--{PREFIX}line_pad=True", f"--{PREFIX}line_pad=False"))

    cli = DimlabCLI(args=argv, run=False)
    backbone = cli.model.backbone
    flags = {k[len(PREFIX) :]: v for k, v in choice.items()}
    assert isinstance(backbone, DiM)
    assert backbone.init_args["multi_scan"] == flags["multi_scan"]
    reference = tiny_dim(**TINY_DIM, **flags)
    assert backbone.schedule == reference.schedule
    assert (backbone.skip_fusion_mode is not None) == flags["long_skip"]
    assert (backbone.line_pad_len > 0) == flags["line_pad"]
    assert (backbone.num_separators > 0) == flags["cond_separator"]
    assert hasattr(backbone, "local_enhance_in") == flags["local_enhance"]
    expected = sum(p.numel() for p in reference.parameters())
    assert sum(p.numel() for p in backbone.parameters()) == expected
    assert list(cli.model.hparams["betas"]) == [0.9, 0.95]  # a list-valued override survives the agent
    assert cli.trainer.max_steps == 5
    assert isinstance(cli.trainer.logger, WandbLogger)
    assert Path(cli.trainer.default_root_dir) == tmp_path / "out" / "sweep" / f"run{combo}"
