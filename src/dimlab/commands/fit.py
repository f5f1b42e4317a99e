"""``dimlab fit | validate | test``: LightningCLI over the DiffusionModule and the ShardDataModule.

``dimlab fit --config experiments/...yaml``; ``--print_config`` shows the resolved config and ``--key=value``
overrides any entry.
"""

from __future__ import annotations

import os
import sys
import warnings

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, RichModelSummary, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from dimlab.commands.config_files import config_file_problem
from dimlab.commands.resume import NothingToResume, keep_checkpoints_under_root, resolve_ckpt_path
from dimlab.data.datamodule import ShardDataModule
from dimlab.lit.callbacks import RunSummary
from dimlab.lit.checkpoint_io import AtomicCheckpointIO, StaleCheckpointCleanup
from dimlab.lit.faults import NonFiniteGuard, PreemptionCheckpoint, SkippedSampleMonitor
from dimlab.lit.module import DiffusionModule
from dimlab.lit.progress import DimlabProgressBar
from dimlab.lit.wandb_config import WandbSaveConfigCallback


class DimlabCLI(LightningCLI):
    """LightningCLI with dimlab's defaults.

    A checkpoint callback that is always there (``checkpoint.*`` keys), checkpoints under
    ``trainer.default_root_dir/checkpoints`` whatever the logger, ``--ckpt_path=last`` that fails when there is
    nothing to resume and ``--ckpt_path=last-or-fresh`` that starts fresh then, atomic checkpoint files, omegaconf
    interpolation in YAML, a saved config that repeat runs may overwrite and that also reaches ``wandb.config``,
    start-up removal of checkpoint temporaries that killed writers left, rich progress (step-based) and model
    summary, ``summary.json`` and a line naming the checkpoint and summary at the end of ``fit``, a checkpoint on
    SIGTERM / SIGINT / SIGUSR1 (pre-emption, SLURM requeue) with exit status 128 + signal, skipped non-finite
    steps and a count of skipped corrupt samples.
    """

    def __init__(self, *args, description: str = "dimlab: DiM / U-ViT diffusion experiments.", **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf", "description": description})
        kwargs.setdefault("save_config_callback", WandbSaveConfigCallback)
        kwargs.setdefault(
            "trainer_defaults",
            {
                "callbacks": [
                    DimlabProgressBar(),
                    RichModelSummary(max_depth=2),
                    RunSummary(),
                    PreemptionCheckpoint(),
                    NonFiniteGuard(),
                    SkippedSampleMonitor(),
                    StaleCheckpointCleanup(),
                ]
            },
        )
        #: The process exit status of the subcommand: 0, or 128 + signal number after a pre-emption stop.
        self.exit_code = 0
        # The EMA copy is in eval mode by design; DiffusionModule.on_train_start names modules that are not.
        warnings.filterwarnings("ignore", r"Found \d+ module\(s\) in eval mode", PossibleUserWarning)
        super().__init__(DiffusionModule, ShardDataModule, *args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test; not ``predict``, which has nothing to run (``dimlab sample`` draws images)."""
        commands = LightningCLI.subcommands()
        del commands["predict"]
        return commands

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
        keep_checkpoints_under_root(self.trainer)

    def parse_arguments(self, parser, args) -> None:
        """LightningCLI's parsing, after a check that names the ``--config`` file with a YAML error."""
        argv = sys.argv[1:] if args is None else args
        problem = config_file_problem(argv) if isinstance(argv, (list, tuple)) else None
        if problem is not None:
            parser.error(problem)
        super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})

    def before_fit(self) -> None:
        """Resolve ``--ckpt_path=last`` / ``last-or-fresh`` (dimlab.commands.resume); nothing to resume from
        ``last`` is a usage error (exit status 2)."""
        config = self.config_init[self.subcommand]
        try:
            config.ckpt_path = resolve_ckpt_path(self.trainer, config.get("ckpt_path"))
        except NothingToResume as err:
            self.parser.error(str(err))

    def after_fit(self) -> None:
        """Say where the checkpoint and the summary are; a pre-empted run exits with 128 + the signal number
        (after its checkpoint is saved), not 0."""
        preemption = next((cb for cb in self.trainer.callbacks if isinstance(cb, PreemptionCheckpoint)), None)
        stop_signal = preemption.stop_signal if preemption is not None else None
        if stop_signal is not None:
            self.exit_code = 128 + stop_signal.value
        rank_zero_info(_fit_report(self.trainer, preemption, self.exit_code))


def _fit_report(trainer: L.Trainer, preemption: PreemptionCheckpoint | None, exit_code: int) -> str:
    """The last line of ``dimlab fit``: how it ended, the checkpoint to resume or sample from, the summary."""
    summary = os.path.join(trainer.default_root_dir, "summary.json")
    where = f"summary {summary}" if os.path.exists(summary) else "no summary.json (no RunSummary callback)"
    if preemption is not None and preemption.stop_signal is not None:
        return (
            f"dimlab fit: pre-empted by {preemption.stop_signal.name} at step {trainer.global_step}; saved "
            f"{preemption.saved_path} (resume with --ckpt_path=last); {where}; exit status {exit_code}"
        )
    callback = trainer.checkpoint_callback
    checkpoint = (callback.last_model_path or callback.best_model_path) if callback is not None else ""
    saved = f"last checkpoint {checkpoint}" if checkpoint else "no checkpoint written"
    step = getattr(trainer.strategy.checkpoint_io, "saved_steps", {}).get(checkpoint)
    if step is not None and step < trainer.global_step:
        # Lightning's last.ckpt is a copy of the newest periodic checkpoint, not of the final weights
        saved += f" (step {step}: the steps after it are in no checkpoint; make max_steps a multiple of "
        saved += "checkpoint.every_n_train_steps)"
    return f"dimlab fit: stopped at step {trainer.global_step}; {saved}; {where}"
