"""``manifest.json``: what a shard directory holds (splits, counts, classes, hashes) and the atomic JSON writes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from dimlab.files import atomic_write

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large shards do not need to fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers never see a half-written file (:func:`dimlab.files.atomic_write`)."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, payload: Any) -> None:
    """Atomically write ``payload`` as indented JSON (see :func:`atomic_write_text`)."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and sanity-check ``directory/manifest.json``; errors name the file and the missing key."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no {MANIFEST_NAME} (expected a shard directory written by `dimlab shards`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    for key in ("kind", "splits"):
        if key not in manifest:
            raise ValueError(f"{path}: missing key {key!r}; expected a manifest with 'kind' and 'splits'")
    return manifest


def summarise_split(shard_records: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-shard records (name, samples, per_class, skipped, sha256) into one split's entry."""
    per_class: dict[str, int] = {}
    skipped: list[dict[str, str]] = []
    for record in shard_records:
        for label, count in record["per_class"].items():
            per_class[label] = per_class.get(label, 0) + count
        skipped.extend(record["skipped"])
    return {
        "samples": sum(record["samples"] for record in shard_records),
        "per_class": dict(sorted(per_class.items(), key=lambda item: int(item[0]))),
        "skipped": len(skipped),
        "skipped_sources": skipped,
        "shards": [
            {"name": r["name"], "samples": r["samples"], "bytes": r["bytes"], "sha256": r["sha256"]}
            for r in shard_records
        ],
    }
