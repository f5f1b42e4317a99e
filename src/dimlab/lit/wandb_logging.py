"""Weights & Biases glue: the resolved LightningCLI config into ``wandb.config`` (and as an artifact), and a reader
for offline runs.

Lightning's stock ``SaveConfigCallback`` only writes ``config.yaml`` next to the logs; with a ``WandbLogger`` the
full config never reaches W&B (Lightning #7679, #11256, #14628). The supported fix is to override its
``save_config`` hook (Lightning PR #17475), which is what :class:`WandbSaveConfigCallback` does.

API keys never belong in a config: W&B reads ``WANDB_API_KEY`` or the credentials ``wandb login`` stores. The
callback refuses a config that holds a key that looks like a secret.
"""

from __future__ import annotations

import json
import re
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

__all__ = [
    "OfflineRun",
    "WandbSaveConfigCallback",
    "find_secret_keys",
    "push_config",
    "read_offline_run",
    "wait_for_offline_run",
    "wandb_loggers",
]

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
    import wandb

    run.config.update(tree, allow_val_change=True)
    with tempfile.TemporaryDirectory(prefix="dimlab-config-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text)
        artifact = wandb.Artifact(name=f"config-{run.id}", type="config")
        artifact.add_file(str(path), name="config.yaml")  # the default "mutable" policy copies it now
        run.log_artifact(artifact)


# ------------------------------------------------------------------------------------------ offline run reader
_LOG_HEADER = struct.Struct("<4sHB")  # ident ":W&B", magic 0xBEE1, version 0
_RECORD_HEADER = struct.Struct("<IHB")  # crc32, payload length, chunk type
_BLOCK_SIZE = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline W&B run recorded: run metadata, config, history rows, summary and logged artifacts.

    ``config`` and ``summary`` are nested dicts, ``history`` one dict per ``log`` call (nested keys joined with
    ``/`` would be ambiguous, so history values are nested dicts too), ``artifacts`` the (type, name) pairs.
    """

    run_id: str = ""
    project: str = ""
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    artifacts: list[tuple[str, str]] = field(default_factory=list)
    exit_code: int | None = None

    @property
    def finished(self) -> bool:
        """Whether the file holds the run's exit record (the run ended and everything before it is written)."""
        return self.exit_code is not None

    def metric(self, key: str) -> list[Any]:
        """Every logged value of a top-level history key, in logging order."""
        return [row[key] for row in self.history if key in row]


def _set_nested(target: dict, keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def _iter_chunks(path: Path):
    """Payloads of a wandb ``.wandb`` file: LevelDB-log framing (32 KiB blocks, FULL/FIRST/MIDDLE/LAST chunks)."""
    data = path.read_bytes()
    if len(data) < _LOG_HEADER.size:
        raise ValueError(f"{path}: too short to be a W&B run file")
    ident, magic, version = _LOG_HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path}: not a W&B run file (header {ident!r} {magic:#x} v{version})")
    pos, pending = _LOG_HEADER.size, b""
    while pos + _RECORD_HEADER.size <= len(data):
        left_in_block = _BLOCK_SIZE - pos % _BLOCK_SIZE
        if left_in_block < _RECORD_HEADER.size:
            pos += left_in_block
            continue
        crc, length, kind = _RECORD_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left_in_block
            continue
        payload = data[pos + _RECORD_HEADER.size : pos + _RECORD_HEADER.size + length]
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: corrupt record at byte {pos} (checksum mismatch)")
        pos += _RECORD_HEADER.size + length
        if kind == _FULL:
            yield payload
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            yield pending + payload
            pending = b""
        else:
            raise ValueError(f"{path}: unknown chunk type {kind} at byte {pos}")


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Parse an offline run (``wandb/offline-run-*`` folder, or its ``run-<id>.wandb`` file) without the network.

    Offline runs of wandb 0.2x/0.3x keep everything in the binary ``run-<id>.wandb`` file (no
    ``files/config.yaml`` or ``wandb-summary.json`` until synced), and the SDK no longer ships a Python reader for
    it, so the record framing is decoded here and each record parsed with wandb's own protobuf classes.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(run_dir)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if len(files) != 1:
            raise FileNotFoundError(f"expected one run-*.wandb file in {path}, found {len(files)}")
        path = files[0]
    run = OfflineRun()
    for payload in _iter_chunks(path):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.name, run.group = r.run_id, r.project, r.display_name, r.run_group
            run.tags = list(r.tags)
            for item in r.config.update:
                run.config[item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                keys = list(item.nested_key) or [item.key]
                _set_nested(run.config, keys, json.loads(item.value_json))
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                keys = list(item.nested_key) or [item.key]
                _set_nested(row, keys, json.loads(item.value_json))
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                keys = list(item.nested_key) or [item.key]
                _set_nested(run.summary, keys, json.loads(item.value_json))
        elif kind == "artifact":
            run.artifacts.append((record.artifact.type, record.artifact.name))
        elif kind == "exit":
            run.exit_code = int(record.exit.exit_code)
    run.config.pop("_wandb", None)
    return run


def wait_for_offline_run(run_dir: str | Path, timeout_s: float = 60.0, poll_s: float = 0.2) -> OfflineRun:
    """:func:`read_offline_run` once the run's exit record is on disk.

    ``wandb.finish()`` returns before the background ``wandb-core`` process has written the offline file, so a
    reader that runs right after it sees a partial (often empty) run.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            run = read_offline_run(run_dir)
        except FileNotFoundError:
            run = None
        if run is not None and run.finished:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"no finished W&B run in {run_dir} after {timeout_s:.0f} s")
        time.sleep(poll_s)
