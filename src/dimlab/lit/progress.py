"""The training progress bar of ``dimlab fit``: Lightning's Rich bar, told about step-based runs and logs."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar

from dimlab.console import console_options


class DimlabProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar`` for runs that count optimizer steps, not epochs.

    With ``max_steps`` and no ``max_epochs`` Lightning keeps ``max_epochs = -1`` and its bar reads ``Epoch 1/-2``;
    this one reads ``Epoch 1`` then (an epoch total only when there is one) and shows the global step against
    ``max_steps`` (``step: 1200/400000``) next to the metrics. When the output is not a terminal its console does
    not wrap lines at 80 columns (:func:`dimlab.console.console_options`). Arguments are ``RichProgressBar``'s.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("console_kwargs", console_options())
        super().__init__(*args, **kwargs)

    def _get_train_description(self, current_epoch: int) -> str:
        # RichProgressBar's own (private) hook for this text; the padding matches its validation description.
        description = f"Epoch {current_epoch}"
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs > 0:
            description += f"/{max_epochs - 1}"
        if len(self.validation_description) > len(description):
            description = f"{description:{len(self.validation_description)}}"
        return description

    def get_metrics(self, trainer, pl_module) -> dict:
        """The bar's metrics, led by ``step: <global step>/<max_steps>`` when ``max_steps`` is set."""
        metrics = super().get_metrics(trainer, pl_module)
        if trainer.max_steps is not None and trainer.max_steps > 0:
            metrics = {"step": f"{trainer.global_step}/{trainer.max_steps}", **metrics}
        return metrics
