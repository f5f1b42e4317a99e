"""The ``dimlab`` command.

``fit | validate | test | predict`` are LightningCLI subcommands (``dimlab fit --config experiments/...yaml``);
the other subcommands are small argparse programs that live beside the code they drive.
"""

from __future__ import annotations

import importlib
import sys

import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichModelSummary, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dimlab.data.datamodule import ShardDataModule
from dimlab.lit.callbacks import RunSummary
from dimlab.lit.checkpoint_io import AtomicCheckpointIO
from dimlab.lit.faults import NonFiniteGuard, PreemptionCheckpoint, SkippedSampleMonitor
from dimlab.lit.module import DiffusionModule
from dimlab.lit.wandb_logging import WandbSaveConfigCallback

# subcommand -> module with a ``main(argv) -> int``
EXTRA_COMMANDS = {
    "sample": ("dimlab.lit.sample_cli", "generate images (PNGs, grid, .npz) from a checkpoint"),
    "shards": ("dimlab.data.cli", "write WebDataset shards (cifar10, imagefolder, digits, latents)"),
    "fid": ("dimlab.eval.cli", "FID of a checkpoint, an image folder or an .npz; reference statistics"),
    "convert-official": (
        "dimlab.commands.convert_official",
        "convert official DiM weights to/from dimlab checkpoints",
    ),
    "ablate": ("dimlab.ablation", "run / dry-run / emit a W&B sweep for an ablation matrix"),
}

DESCRIPTION = "dimlab: DiM / U-ViT diffusion experiments.\n\nOther commands: " + "; ".join(
    f"dimlab {name} ({text})" for name, (_, text) in EXTRA_COMMANDS.items()
)


class DimlabCLI(LightningCLI):
    """LightningCLI with dimlab's defaults.

    A checkpoint callback that is always there (``checkpoint.*`` keys), atomic checkpoint files, omegaconf
    interpolation in YAML, a saved config that repeat runs may overwrite and that also reaches ``wandb.config``,
    rich progress and model summary, ``summary.json`` at the end of ``fit``, a checkpoint on SIGTERM/SIGUSR1
    (pre-emption, SLURM requeue), skipped non-finite steps and a count of skipped corrupt samples.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf", "description": DESCRIPTION})
        kwargs.setdefault("save_config_callback", WandbSaveConfigCallback)
        kwargs.setdefault(
            "trainer_defaults",
            {
                "callbacks": [
                    RichProgressBar(),
                    RichModelSummary(max_depth=2),
                    RunSummary(),
                    PreemptionCheckpoint(),
                    NonFiniteGuard(),
                    SkippedSampleMonitor(),
                ]
            },
        )
        super().__init__(DiffusionModule, ShardDataModule, *args, **kwargs)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if (
            config.trainer.get("enable_progress_bar") is False
        ):  # Lightning refuses a progress bar callback then
            callbacks = self.trainer_defaults["callbacks"]
            self.trainer_defaults["callbacks"] = [c for c in callbacks if not isinstance(c, RichProgressBar)]

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dimlab`` console script and ``python -m dimlab``."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    # The selective scan's decays drive CPU states into subnormal floats, which x86 handles ~10x slower; no
    # model output depends on values below 1e-38. (No effect on GPUs.)
    torch.set_flush_denormal(True)
    if argv and argv[0] in EXTRA_COMMANDS:
        module = importlib.import_module(EXTRA_COMMANDS[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    # Without explicit argv LightningCLI reads sys.argv itself (passing both makes it warn).
    DimlabCLI(args=None if from_command_line else argv)
    return 0
