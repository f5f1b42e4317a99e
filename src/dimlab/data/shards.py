"""Turning a shard specification into a shard list, and the distributed rank / world size to split it by."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist
from webdataset.shardlists import expand_urls

from dimlab.data.manifest import MANIFEST_NAME, read_manifest


@dataclass(frozen=True)
class ShardSet:
    """Resolved shards: their paths, the split name (when known) and the manifest of their folder (or None)."""

    urls: list[str]
    split: str | None
    manifest: dict[str, Any] | None

    @property
    def num_samples(self) -> int | None:
        """Samples in these shards according to the manifest, or None without one."""
        if self.manifest is None:
            return None
        counts = {
            shard["name"]: shard["samples"]
            for summary in self.manifest["splits"].values()
            for shard in summary["shards"]
        }
        names = [Path(url).name for url in self.urls]
        if not all(name in counts for name in names):
            return None
        return sum(counts[name] for name in names)


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def resolve_shards(spec: str, *, option: str, default_splits: tuple[str, ...]) -> ShardSet:
    """Resolve ``spec`` (a .tar path, a brace pattern, a glob, or a directory with a manifest) to shards.

    A directory uses its ``manifest.json``: the first split of ``default_splits`` it has (e.g. ``train``;
    ``val`` then ``test`` for validation). Errors name ``option`` and the offending value.
    """
    if not spec:
        raise ValueError(f"{option}: empty shard specification")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / MANIFEST_NAME).is_file():
            raise FileNotFoundError(
                f"{option}={spec}: directory has no {MANIFEST_NAME}; pass a brace pattern such as "
                f"'{spec}/train-{{000000..000009}}.tar' or write the shards with `dimlab shards`"
            )
        manifest = read_manifest(path)
        split = next((name for name in default_splits if name in manifest["splits"]), None)
        if split is None:
            raise ValueError(
                f"{option}={spec}: manifest has splits {sorted(manifest['splits'])}, none of {list(default_splits)}"
            )
        urls = [str(path / shard["name"]) for shard in manifest["splits"][split]["shards"]]
        if not urls:
            raise ValueError(f"{option}={spec}: split {split!r} has no shards")
        missing = [url for url in urls if not Path(url).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{option}={spec}: shard(s) listed in the manifest are missing: {missing[:3]}"
            )
        return ShardSet(urls, split, manifest)

    if any(char in spec for char in "*?[") and not _is_remote(spec):
        urls = sorted(glob.glob(str(path)))
    else:
        urls = expand_urls(spec)
    if not urls:
        raise ValueError(f"{option}={spec}: pattern matched no shards")
    local = [url for url in urls if not _is_remote(url)]
    missing = [url for url in local if not Path(url).is_file()]
    if missing:
        raise FileNotFoundError(f"{option}={spec}: {len(missing)} shard(s) not found, e.g. {missing[0]}")
    manifest = None
    folders = {Path(url).parent for url in local}
    if len(folders) == 1 and len(local) == len(urls) and (next(iter(folders)) / MANIFEST_NAME).is_file():
        manifest = read_manifest(next(iter(folders)))
    return ShardSet(urls, None, manifest)


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size): from ``torch.distributed`` when initialised, else env RANK / WORLD_SIZE, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise ValueError(f"environment RANK={rank} WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
    return rank, world
