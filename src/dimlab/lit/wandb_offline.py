"""A reader for offline W&B runs: what a ``wandb/offline-run-*`` folder recorded, without the network.

Offline runs of wandb 0.2x/0.3x keep everything in the binary ``run-<id>.wandb`` file (no ``files/config.yaml``
or ``wandb-summary.json`` until synced), and the SDK no longer ships a Python reader for it, so the record
framing is decoded here and each record parsed with wandb's own protobuf classes. See docs/logging.md.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

__all__ = ["OfflineRun", "read_offline_run", "wait_for_offline_run"]

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
