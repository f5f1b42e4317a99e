"""What a ``dimlab fit`` run logs, read from its config: the metrics a W&B sweep over it can optimise.

``DiffusionModule`` logs ``train/loss`` every ``trainer.log_every_n_steps`` and ``val/loss_ema`` at each validation;
each ``FIDCallback`` logs ``fid/<setting>`` (:func:`dimlab.lit.fid_callback.fid_metric_key`) every ``every_n_steps``.
Lower is better for all of them. A matrix's ``scorer`` metrics (e.g. the digits demo's class consistency) are
computed by ``dimlab ablate`` after training and are never logged by the run itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dimlab.ablation.matrix import MatrixError

TRAIN_LOSS = "train/loss"
VAL_LOSS = "val/loss_ema"
MINIMIZE = "minimize"


def _read_base(base: Path) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(OmegaConf.load(base), resolve=True) or {}
    except (OSError, OmegaConfBaseException) as err:
        raise MatrixError(f"{base}: cannot read the base experiment ({err})") from err


def _lookup(config: Mapping[str, Any], overrides: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """A dotted setting of the run: the override when there is one, else the base config's value, else ``default``."""
    if key in overrides:
        return overrides[key]
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _fid_keys(callbacks: Any, max_steps: int | None) -> list[str]:
    """Keys of the FID callbacks among ``trainer.callbacks`` that evaluate at least once within ``max_steps``."""
    entries = callbacks if isinstance(callbacks, list) else [callbacks] if callbacks else []
    # Imported here, not at the top: FIDCallback brings Lightning, which `dimlab ablate --help` and the dry run
    # must not pay for (start-up time, issue 18).
    from dimlab.lit.fid_callback import FIDCallback

    keys = []
    for entry in entries:
        if not isinstance(entry, Mapping) or not str(entry.get("class_path", "")).endswith("FIDCallback"):
            continue
        try:
            callback = FIDCallback(**(entry.get("init_args") or {}))
        except (TypeError, ValueError) as err:
            raise MatrixError(
                f"trainer.callbacks: FIDCallback {dict(entry.get('init_args') or {})}: {err}"
            ) from err
        if max_steps is None or callback.every_n_steps <= max_steps:
            keys.append(callback.key)
    return keys


def _validates(config: Mapping[str, Any], overrides: Mapping[str, Any], max_steps: int | None) -> bool:
    """True when the run surely validates: validation data, batches to run, a step interval within max_steps.

    Epoch-based intervals depend on the epoch length, which is not in the config, so they do not count.
    """
    if _lookup(config, overrides, "data.val_shards") is None:
        return False
    if _lookup(config, overrides, "trainer.limit_val_batches", 1.0) in (0, 0.0):
        return False
    interval = _lookup(config, overrides, "trainer.val_check_interval")
    per_epoch = _lookup(config, overrides, "trainer.check_val_every_n_epoch", 1)
    if per_epoch is not None or not isinstance(interval, int) or isinstance(interval, bool):
        return False
    return max_steps is None or interval <= max_steps


def logged_metrics(base: Path, overrides: Mapping[str, Any]) -> dict[str, str]:
    """``{metric: goal}`` of what a fit of ``base`` with dotted ``overrides`` logs, most informative first.

    The FID callbacks' keys, then ``val/loss_ema`` when validation runs within ``trainer.max_steps``, then
    ``train/loss``, which every run logs.
    """
    config = _read_base(base)
    max_steps = _lookup(config, overrides, "trainer.max_steps")
    max_steps = int(max_steps) if isinstance(max_steps, int) and max_steps > 0 else None
    metrics = {key: MINIMIZE for key in _fid_keys(_lookup(config, overrides, "trainer.callbacks"), max_steps)}
    if _validates(config, overrides, max_steps):
        metrics[VAL_LOSS] = MINIMIZE
    metrics[TRAIN_LOSS] = MINIMIZE
    return metrics
