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

from .conftest import TINY_DIM, tiny_experiment

REPO_ROOT = Path(__file__).resolve().parents[2]

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
    # no `dimlab fit` run of this matrix logs fid/fid (it has no FID callback): the sweep takes the training loss
    assert sweep["metric"] == {"name": "train/loss", "goal": "minimize"}
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


def test_the_digits_sweep_optimises_what_its_runs_log_and_says_what_it_cannot(tmp_path):
    """class_consistency is the scorer's (dimlab ablate runs it after training), an accuracy, never logged by fit."""
    sweep, notes = build_sweep(load_matrix(REPO_ROOT / "ablations" / "digits.yaml", output_dir=tmp_path))
    # validation is off (limit_val_batches: 0) and there is no FID callback: the training loss is what is logged
    assert sweep["metric"] == {"name": "train/loss", "goal": "minimize"}
    params = sweep["parameters"]
    assert params["trainer.logger"] == {"value": "lightning.pytorch.loggers.WandbLogger"}, (
        "a run with trainer.logger: false reports nothing to its sweep"
    )
    warnings = [n for n in notes if n.startswith("warning:")]
    assert any("class_consistency" in w and "dimlab.demos.digits.score_checkpoint" in w for w in warnings), (
        notes
    )
    assert any("trainer.logger" in w and "WandbLogger" in w for w in warnings), notes


def test_the_cifar_sweep_optimises_its_fid_callback(tmp_path):
    sweep, notes = build_sweep(load_matrix(REPO_ROOT / "ablations" / "cifar10.yaml", output_dir=tmp_path))
    assert sweep["metric"] == {"name": "fid/10k_dpmpp50_cfg0", "goal": "minimize"}
    assert not [n for n in notes if "fid/10k" in n and n.startswith("warning:")], notes


def test_validation_loss_counts_only_when_validation_runs(write_matrix, tmp_path):
    base = tiny_experiment()
    base["trainer"]["check_val_every_n_epoch"] = None  # step-based validation, as every recipe
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "val.yaml").write_text(yaml.safe_dump(base))

    def metric(**overrides):
        matrix = load_matrix(
            write_matrix(
                {
                    "base": "../experiments/val.yaml",
                    "design": "full",
                    "axes": {"long_skip": [True, False]},
                    "overrides": {"trainer.max_steps": 100, **overrides},
                    "metrics": ["val/loss_ema"],
                }
            )
        )
        return build_sweep(matrix)[0]["metric"]["name"]

    on = {"data.val_shards": "unused/val-000000.tar", "trainer.limit_val_batches": 2}
    assert metric(**on, **{"trainer.val_check_interval": 50}) == "val/loss_ema"
    assert metric(**on, **{"trainer.val_check_interval": 500}) == "train/loss", (
        "first validation after max_steps"
    )
    assert (
        metric(**{**on, "trainer.limit_val_batches": 0}, **{"trainer.val_check_interval": 50}) == "train/loss"
    )


def test_the_sweep_metric_is_in_the_runs_logged_metrics(sweep_matrix, digit_shards, tmp_path, monkeypatch):
    """What the emitter promises, checked on a real (2-step) fit run built from the agent's own arguments."""
    monkeypatch.setenv("WANDB_RUN_ID", "logged")
    sweep, _ = build_sweep(load_matrix(sweep_matrix))
    choice = {k: spec["values"][0] for k, spec in sweep["parameters"].items() if "values" in spec}
    shards = digit_shards(size=16, shard_size=40, workers=2)
    argv = ["fit", *_agent_argv(sweep, choice), f"--data.train_shards={shards}", "--trainer.max_steps=2"]
    cli = DimlabCLI(args=[*argv, "--trainer.logger=false", "--trainer.enable_progress_bar=false"])
    assert sweep["metric"]["name"] in cli.trainer.callback_metrics
