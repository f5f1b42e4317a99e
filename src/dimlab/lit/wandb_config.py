"""Weights & Biases glue: the resolved LightningCLI config into ``wandb.config`` and as an artifact.

Lightning's stock ``SaveConfigCallback`` only writes ``config.yaml`` next to the logs; with a ``WandbLogger`` the
full config never reaches W&B (Lightning #7679, #11256, #14628). The supported fix is to override its
``save_config`` hook (Lightning PR #17475), which is what :class:`WandbSaveConfigCallback` does.

API keys never belong in a config: W&B reads ``WANDB_API_KEY`` or the credentials ``wandb login`` stores. The
callback refuses a config that holds a key that looks like a secret.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

__all__ = ["WandbSaveConfigCallback", "find_secret_keys", "push_config", "wandb_loggers"]

# Key names (the last part of a dotted path) that must never be uploaded.
_SECRET_KEY = re.compile(
    r"(api[_-]?key|apikey|secret|password|passwd|access[_-]?token|auth[_-]?token)$", re.I
)


def wandb_loggers(trainer) -> list[WandbLogger]:
    """The trainer's loggers that are ``WandbLogger`` instances (usually zero or one)."""
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def find_secret_keys(config: Any, prefix: str = "") -> list[str]:
    """Dotted paths of entries in a nested config whose key name looks like a credential (``api_key``, ...)."""
    found: list[str] = []
    if isinstance(config, dict):
        for key, value in config.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if _SECRET_KEY.search(str(key)) and value not in (None, ""):
                found.append(path)
            found.extend(find_secret_keys(value, path))
    elif isinstance(config, (list, tuple)):
        for i, value in enumerate(config):
            found.extend(find_secret_keys(value, f"{prefix}[{i}]"))
    return found


class WandbSaveConfigCallback(SaveConfigCallback):
    """``SaveConfigCallback`` that also sends the resolved config to every ``WandbLogger``.

    It still writes ``config.yaml`` to ``trainer.log_dir`` (overwriting by default, so repeat and resumed runs do
    not abort); for a ``WandbLogger`` that directory is the logger's ``save_dir``. On rank zero, for each W&B logger
    it then

    * merges the whole config (as a nested dict, the same tree as the YAML) into ``wandb.config``;
    * logs the YAML as an artifact of type ``config`` named ``config-<run id>`` (file ``config.yaml``), so the
      exact command-line + file composition that produced a run can be downloaded and rerun.

    Without a W&B logger it behaves like the stock callback, except that it refuses (at construction, before any
    run starts) a config holding an entry named like a credential (``api_key``, ``password``, ...).
    """

    def __init__(self, *args, overwrite: bool = True, **kwargs):
        super().__init__(*args, overwrite=overwrite, **kwargs)
        # Checked here, at CLI start-up: the Trainer starts the W&B run (and logs in) before any callback's setup.
        secrets = find_secret_keys(self.resolved_config()[1])
        if secrets:
            raise ValueError(
                f"the config holds {', '.join(secrets)}, which look like credentials and would be uploaded to W&B "
                "and saved in config.yaml. Remove them; W&B reads WANDB_API_KEY or the key stored by `wandb login`."
            )

    def resolved_config(self) -> tuple[str, dict]:
        """The config as YAML text and as a nested dict (``None`` values kept, for reproducibility)."""
        text = self.parser.dump(self.config, skip_none=False)
        tree = yaml.safe_load(text) or {}
        if not isinstance(tree, dict):
            raise ValueError(f"the dumped LightningCLI config is not a mapping: {type(tree).__name__}")
        return text, tree

    def save_config(self, trainer, pl_module, stage: str) -> None:
        loggers = wandb_loggers(trainer)
        if not loggers:
            return
        text, tree = self.resolved_config()
        for logger in loggers:
            push_config(logger.experiment, text, tree)


def push_config(run, text: str, tree: dict) -> None:
    """Merge ``tree`` into ``run.config`` and log ``text`` as the ``config-<run id>`` artifact of ``run``."""
    import wandb  # here, not at module level: a fit without a W&B logger should not pay wandb's import

    run.config.update(tree, allow_val_change=True)
    with tempfile.TemporaryDirectory(prefix="dimlab-config-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text)
        artifact = wandb.Artifact(name=f"config-{run.id}", type="config")
        artifact.add_file(str(path), name="config.yaml")  # the default "mutable" policy copies it now
        run.log_artifact(artifact)
