"""Moved: the config callback is :mod:`dimlab.lit.wandb_config`, the offline-run reader
:mod:`dimlab.lit.wandb_offline`; these names stay importable here for one release."""

from dimlab.lit.wandb_config import WandbSaveConfigCallback, find_secret_keys, push_config, wandb_loggers
from dimlab.lit.wandb_offline import OfflineRun, read_offline_run, wait_for_offline_run

__all__ = [
    "OfflineRun",
    "WandbSaveConfigCallback",
    "find_secret_keys",
    "push_config",
    "read_offline_run",
    "wait_for_offline_run",
    "wandb_loggers",
]
