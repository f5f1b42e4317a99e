"""Resumable, parallel, atomic tar-shard writing shared by every ``dimlab shards`` source.

A source (CIFAR-10, digits, an image folder, latents) only says how to fill one shard from its payload
(a *builder*); this module plans shard names, runs the builders in worker processes with a rich progress
bar, writes each shard to a temporary file that is renamed into place when complete, keeps a per-shard
record so a rerun skips finished shards, and finally writes ``manifest.json``.

webdataset's ``ShardWriter`` is not used because it decides shard boundaries by streaming order, which
cannot be resumed per shard or parallelised; ``TarWriter`` is used for the tar format itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from dimlab.console import make_console
from dimlab.data.manifest import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    atomic_write_json,
    sha256_file,
    summarise_split,
)
from dimlab.files import TEMP_MARKER, atomic_write

log = logging.getLogger(__name__)

PROGRESS_DIR = ".progress"


def shard_name(split: str, index: int) -> str:
    """Deterministic shard file name: ``{split}-{index:06d}.tar``."""
    return f"{split}-{index:06d}.tar"


def sample_key(split: str, index: int) -> str:
    """Deterministic, dot-free sample key (webdataset splits member names at the first dot)."""
    return f"{split}_{index:08d}"


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: its split, index, source payload (picklable) and number of source items."""

    split: str
    index: int
    payload: Any
    size: int

    @property
    def name(self) -> str:
        """File name of the finished shard."""
        return shard_name(self.split, self.index)


class SkipSample(Exception):
    """Raised by a builder for a source item that cannot be read; the item is reported and skipped."""


@dataclass
class ShardSink:
    """What a builder writes one shard's samples into: the tar, label counts and skipped sources."""

    writer: wds.TarWriter
    per_class: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    samples: int = 0

    def write(self, key: str, members: dict[str, bytes], label: int | None) -> None:
        """Write one sample (``members`` maps extension -> bytes); ``label`` is counted per class."""
        self.writer.write({"__key__": key, **members})
        self.samples += 1
        if label is not None:
            self.per_class[str(label)] = self.per_class.get(str(label), 0) + 1

    def skip(self, source: str, reason: str) -> None:
        """Record an unreadable source item (reported on the console and in the manifest)."""
        self.skipped.append({"source": source, "reason": reason})


#: A builder fills one shard: ``builder(job, sink, advance)``; ``advance(n)`` reports progress (optional).
ShardBuilder = Callable[[ShardJob, ShardSink, Callable[[int], None]], None]


def plan_jobs(items_by_split: dict[str, Sequence[Any]], shard_size: int) -> list[ShardJob]:
    """Cut each split's ordered item list into consecutive shards of ``shard_size`` items.

    Each payload is ``(first_item_index, items)`` so builders can derive stable sample keys.
    """
    if shard_size <= 0:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    jobs = []
    for split, items in items_by_split.items():
        for index, start in enumerate(range(0, len(items), shard_size)):
            chunk = items[start : start + shard_size]
            jobs.append(ShardJob(split, index, (start, chunk), len(chunk)))
    return jobs


def fingerprint(settings: dict[str, Any], identities: Sequence[Any]) -> str:
    """Hash of the settings and source item identities: a resumed run must plan the same shards."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for identity in identities:
        digest.update(repr(identity).encode())
    return digest.hexdigest()


def _record_path(out_dir: Path, name: str) -> Path:
    return out_dir / PROGRESS_DIR / f"{name}.json"


def _finished_record(out_dir: Path, job: ShardJob) -> dict[str, Any] | None:
    """The record of a shard finished by an earlier run, or None when it must be (re)written."""
    record_path, shard_path = _record_path(out_dir, job.name), out_dir / job.name
    if not (record_path.is_file() and shard_path.is_file()):
        return None
    try:
        record = json.loads(record_path.read_text())
    except json.JSONDecodeError:
        return None
    # The record is written before the shard is renamed into place; a size mismatch means the shard on
    # disk is not the one the record describes (e.g. replaced by hand), so it is rewritten.
    return record if record.get("bytes") == shard_path.stat().st_size else None


def _write_one_shard(builder: ShardBuilder, out_dir: Path, job: ShardJob, advance=None) -> dict[str, Any]:
    """Build one shard into a temporary file, record it, then rename it into place."""
    with atomic_write(out_dir / job.name, "wb") as stream:
        writer = wds.TarWriter(stream, encoder=False, mtime=0, user="dimlab", group="dimlab", mode=0o444)
        sink = ShardSink(writer)
        builder(job, sink, advance or (lambda n: None))
        writer.close()
        stream.flush()
        record = {
            "name": job.name,
            "split": job.split,
            "index": job.index,
            "samples": sink.samples,
            "bytes": os.path.getsize(stream.name),
            "sha256": sha256_file(stream.name),
            "per_class": sink.per_class,
            "skipped": sink.skipped,
        }
        # The record goes first: a shard in place always has one (a record without its shard is redone).
        atomic_write_json(_record_path(out_dir, job.name), record)
    return record


def _check_plan(out_dir: Path, plan_hash: str) -> None:
    plan_path = out_dir / PROGRESS_DIR / "plan.json"
    if plan_path.is_file():
        previous = json.loads(plan_path.read_text()).get("fingerprint")
        if previous != plan_hash:
            raise ValueError(
                f"{out_dir}: was written with different settings or source files (plan {previous[:12]}... vs "
                f"{plan_hash[:12]}...); resuming would mix two datasets. Use a fresh output directory."
            )
    else:
        atomic_write_json(plan_path, {"fingerprint": plan_hash})


def _remove_stale_temporaries(out_dir: Path) -> None:
    for stale in out_dir.glob(f"*.tar{TEMP_MARKER}*"):
        log.info("removing unfinished shard %s from an interrupted run", stale)
        stale.unlink(missing_ok=True)


def make_progress(console: Console | None = None, disable: bool = False) -> Progress:
    """The rich progress bar used by every writer (and ``dimlab fid ref-stats``): done / total, elapsed, ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=disable,
    )


def write_shards(
    out_dir: str | os.PathLike,
    jobs: Sequence[ShardJob],
    builder: ShardBuilder,
    *,
    manifest_fields: dict[str, Any],
    plan_hash: str,
    workers: int = 1,
    description: str = "writing shards",
    console: Console | None = None,
) -> dict[str, Any]:
    """Write every job's shard into ``out_dir`` (skipping finished ones) and return the written manifest.

    ``builder`` must be picklable (a module-level function or a ``functools.partial`` of one) when
    ``workers > 1``; with ``workers <= 1`` it runs in this process (the latent writer, which owns the GPU).
    """
    out_dir = Path(out_dir)
    (out_dir / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
    console = console or make_console(stderr=True)
    _check_plan(out_dir, plan_hash)
    _remove_stale_temporaries(out_dir)

    records: dict[str, dict[str, Any]] = {}
    pending = []
    for job in jobs:
        record = _finished_record(out_dir, job)
        if record is None:
            pending.append(job)
        else:
            records[job.name] = record
    if records:
        console.print(f"resuming: {len(records)} finished shard(s) kept, {len(pending)} to write")

    def report(record: dict[str, Any]) -> None:
        records[record["name"]] = record
        for skipped in record["skipped"]:
            console.print(f"[yellow]skipped[/] {skipped['source']}: {skipped['reason']}")

    # The pool is started before the progress bar so no rich refresh thread exists when workers fork.
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 and len(pending) > 1 else None
    try:
        with make_progress(console) as progress:
            task = progress.add_task(description, total=sum(job.size for job in jobs))
            progress.advance(task, sum(job.size for job in jobs if job.name in records))
            if pool is None:
                for job in pending:
                    before = progress.tasks[task].completed
                    report(_write_one_shard(builder, out_dir, job, lambda n: progress.advance(task, n)))
                    # builders that do not call advance still move the bar by the whole shard
                    if progress.tasks[task].completed == before:
                        progress.advance(task, job.size)
            else:
                run = functools.partial(_write_one_shard, builder, out_dir)
                sizes = {job.name: job.size for job in pending}
                for record in pool.imap_unordered(run, pending):
                    report(record)
                    progress.advance(task, sizes[record["name"]])
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    splits: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        splits.setdefault(job.split, []).append(records[job.name])
    manifest = {
        "format_version": MANIFEST_VERSION,
        **manifest_fields,
        "splits": {split: summarise_split(split_records) for split, split_records in splits.items()},
    }
    atomic_write_json(out_dir / MANIFEST_NAME, manifest)
    for split, summary in manifest["splits"].items():
        console.print(
            f"{split}: {summary['samples']} samples in {len(summary['shards'])} shard(s)"
            + (f", [yellow]{summary['skipped']} source item(s) skipped[/]" if summary["skipped"] else "")
        )
    return manifest
