"""Reference (real-image) FID statistics: compute them from WebDataset shards, cache and load them as ``.npz``.

Our cache holds ``mu``, ``sigma``, ``count``, ``resolution`` and ``source``. pytorch-fid style files (``mu`` and
``sigma`` only, e.g. U-ViT's ``fid_stats_imagenet256_guided_diffusion.npz``) load too, with unknown count.

Shards are read with webdataset directly (an image under ``png``/``jpg``/``jpeg``/``webp``, the label under
``cls`` is not needed), so this module does not depend on ``dimlab.data``'s training pipeline. A shard folder
written by ``dimlab shards`` (it has a ``manifest.json``) contributes one split, ``train`` unless another is
asked for: statistics of the training images are what FID is reported against, and mixing in the held-out split
would change them.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import braceexpand  # a webdataset dependency
import numpy as np
import torch
import webdataset as wds
from PIL import Image

from dimlab.data.manifest import MANIFEST_NAME, read_manifest
from dimlab.data.shards import ShardSet, resolve_shards
from dimlab.eval.fid import GaussianStats, stats_from_metric
from dimlab.eval.inception import build_fid_metric, resolve_inception_weights
from dimlab.files import atomic_write

__all__ = [
    "DEFAULT_SPLIT",
    "ReferenceShards",
    "ReferenceStats",
    "center_crop_resize",
    "compute_reference_stats",
    "expand_shards",
    "find_reference_shards",
    "iter_shard_images",
    "load_reference_stats",
]

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
DEFAULT_SPLIT = "train"


@dataclass(frozen=True)
class ReferenceStats:
    """Gaussian statistics of real-image Inception features plus where they came from.

    ``count``/``resolution`` are None for pytorch-fid style files that do not record them.
    """

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None = None
    resolution: int | None = None
    source: str = ""

    def __post_init__(self):
        checked = GaussianStats(self.mu, self.sigma, self.count)  # validates shapes, casts to float64
        object.__setattr__(self, "mu", checked.mu)
        object.__setattr__(self, "sigma", checked.sigma)

    def save(self, path: str | Path) -> Path:
        """Write the statistics as ``.npz`` (float64 ``mu``/``sigma``; -1 / "" mark unknown count/resolution)."""
        out = Path(path)
        with atomic_write(out, "wb") as fh:  # no half-written cache file if interrupted
            np.savez(
                fh,
                mu=self.mu,
                sigma=self.sigma,
                count=np.int64(-1 if self.count is None else self.count),
                resolution=np.int64(-1 if self.resolution is None else self.resolution),
                source=np.str_(self.source),
            )
        return out


def load_reference_stats(path: str | Path) -> ReferenceStats:
    """Read our ``.npz`` cache or a pytorch-fid style ``.npz`` (keys ``mu``, ``sigma``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"reference statistics file not found: {p}")
    try:
        data = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"{p} is not a readable .npz file: {err}") from err
    with data:
        keys = set(data.files)
        if not {"mu", "sigma"} <= keys:
            hint = ""
            if "arr_0" in keys:
                hint = (
                    " (it looks like an ADM sample/reference batch: score its images with --images instead)"
                )
            raise ValueError(f"{p}: expected keys 'mu' and 'sigma', found {sorted(keys)}{hint}")
        count = int(data["count"]) if "count" in keys else -1
        resolution = int(data["resolution"]) if "resolution" in keys else -1
        source = str(data["source"]) if "source" in keys else ""
        mu, sigma = data["mu"], data["sigma"]
    try:
        return ReferenceStats(
            mu=mu,
            sigma=sigma,
            count=None if count < 0 else count,
            resolution=None if resolution < 0 else resolution,
            source=source or str(p),
        )
    except ValueError as err:
        raise ValueError(f"{p}: {err}") from err


@dataclass(frozen=True)
class ReferenceShards:
    """The shards reference statistics are computed from: their paths, the split they hold (None when unknown,
    e.g. an explicit list) and their image count according to their folder's manifest (None without one)."""

    urls: list[str]
    split: str | None = None
    num_images: int | None = None


def find_reference_shards(
    spec: str | Path | Iterable[str | Path], split: str | None = None
) -> ReferenceShards:
    """Resolve a shard folder, glob, brace pattern (``a-{000..009}.tar``) or list to the shards to read.

    A folder with a ``manifest.json`` gives its ``split`` (default ``train``); a folder without one gives its
    ``{split}-*.tar``, or every ``*.tar`` when ``split`` is None and the names do not show several splits.
    ``split`` only applies to folders.
    """
    folder = Path(spec) if isinstance(spec, str | Path) else None
    if split is not None and (folder is None or not folder.is_dir()):
        raise ValueError(f"--split {split!r} picks a split of a shard folder, but {spec} is not a folder")
    if folder is not None and folder.is_dir():
        if (folder / MANIFEST_NAME).is_file():
            return _manifest_split(folder, split or DEFAULT_SPLIT)
        return ReferenceShards(_folder_split(folder, split), split)
    urls = _expand_pattern(spec)
    folders = {Path(url).parent for url in urls}
    manifest = None
    if len(folders) == 1 and (next(iter(folders)) / MANIFEST_NAME).is_file():
        manifest = read_manifest(next(iter(folders)))
    return ReferenceShards(urls, None, ShardSet(urls, None, manifest).num_samples)


def _manifest_split(folder: Path, split: str) -> ReferenceShards:
    manifest = read_manifest(folder)
    if manifest["kind"] != "images":
        raise ValueError(
            f"{folder / MANIFEST_NAME}: kind {manifest['kind']!r}; reference statistics need image shards"
        )
    if split not in manifest["splits"]:
        raise ValueError(
            f"{folder / MANIFEST_NAME}: no split {split!r}; it has {sorted(manifest['splits'])} (choose with --split)"
        )
    shard_set = resolve_shards(str(folder), option="shards", default_splits=(split,))
    return ReferenceShards(shard_set.urls, split, shard_set.num_samples)


def _folder_split(folder: Path, split: str | None) -> list[str]:
    pattern = "*.tar" if split is None else f"{split}-*.tar"
    urls = sorted(str(p) for p in folder.glob(pattern))
    if not urls:
        raise FileNotFoundError(f"no shards found in {folder} (expected {pattern})")
    prefixes = sorted({Path(url).name.rsplit("-", 1)[0] for url in urls if "-" in Path(url).name})
    if split is None and len(prefixes) > 1:
        raise ValueError(
            f"{folder}: shards of several splits ({', '.join(prefixes)}) and no {MANIFEST_NAME}; pick one with "
            "--split NAME (reads NAME-*.tar)"
        )
    return urls


def expand_shards(spec: str | Path | Iterable[str | Path], split: str | None = None) -> list[str]:
    """Shard paths from a folder, a glob, a brace pattern or a list (see :func:`find_reference_shards`)."""
    return find_reference_shards(spec, split).urls


def _expand_pattern(spec: str | Path | Iterable[str | Path]) -> list[str]:
    if not isinstance(spec, str | Path):
        urls = [str(s) for s in spec]
    elif any(c in str(spec) for c in "*?["):
        urls = sorted(glob.glob(str(spec)))
    else:
        urls = list(braceexpand.braceexpand(str(spec)))
    if not urls:
        raise FileNotFoundError(
            f"no shards found for {spec!r} (expected a directory of .tar, a glob or a list)"
        )
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) do not exist, first: {missing[0]}")
    return urls


def center_crop_resize(image, resolution: int):
    """ADM's reference-batch preprocessing: box-halve while large, bicubic-resize the short side, centre-crop.

    This is how guided-diffusion built the ImageNet reference batches U-ViT's statistics derive from, so
    statistics computed from raw ImageNet JPEGs with it are comparable.
    """
    image = image.convert("RGB")
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    left = (image.size[0] - resolution) // 2
    top = (image.size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


class _ToUint8Image:
    """Picklable sample -> (key, uint8 CHW tensor) map for DataLoader workers."""

    def __init__(self, resolution: int | None):
        self.resolution = resolution

    def __call__(self, sample: dict):
        key = sample.get("__key__", "?")
        found = next((k for k in IMAGE_KEYS if k in sample), None)
        if found is None:
            raise ValueError(
                f"sample {key!r} in {sample.get('__url__', '?')} has no image; expected one of {IMAGE_KEYS}, "
                f"found keys {sorted(k for k in sample if not k.startswith('__'))}"
            )
        image = sample[found]
        image = (
            image.convert("RGB") if self.resolution is None else center_crop_resize(image, self.resolution)
        )
        array = np.asarray(image, dtype=np.uint8)
        return key, torch.from_numpy(array.copy()).permute(2, 0, 1)


def _collate_same_size(batch):
    sizes = {tuple(img.shape) for _, img in batch}
    if len(sizes) > 1:
        raise ValueError(
            f"images of different sizes {sorted(sizes)} in one batch (e.g. sample {batch[0][0]!r}); "
            "pass resolution=R (--resolution R) to centre-crop and resize them"
        )
    return torch.stack([img for _, img in batch])


def iter_shard_images(
    shards: str | Path | Iterable[str | Path],
    resolution: int | None = None,
    batch_size: int = 50,
    num_workers: int = 0,
    split: str | None = None,
) -> Iterator[torch.Tensor]:
    """Yield uint8 (B, 3, H, W) batches of the images in WebDataset shards, in shard order.

    With ``resolution`` each image is centre-cropped and resized ADM-style (:func:`center_crop_resize`);
    without it all images must already share one size. A shard folder gives one ``split``
    (:func:`find_reference_shards`; ``train`` by default).
    """
    urls = expand_shards(shards, split)
    dataset = (
        wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, empty_check=False)
        .decode("pil")
        .map(_ToUint8Image(resolution))
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=min(num_workers, len(urls)),
        collate_fn=_collate_same_size,
    )
    yield from loader


def compute_reference_stats(
    images: Iterable[torch.Tensor],
    metric=None,
    inception_weights: str | Path | None = None,
    resolution: int | None = None,
    source: str = "",
    device: str | torch.device = "cpu",
    max_images: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ReferenceStats:
    """Inception statistics of uint8 image batches (B, 3, H, W) (or single (3, H, W) images).

    ``metric`` is a ``FrechetInceptionDistance`` (built from ``inception_weights`` via
    :func:`dimlab.eval.inception.build_fid_metric` when omitted); its real-feature state is reset and used.
    ``resolution`` is recorded (and checked against the images when given). ``on_batch(n)`` is called after
    each batch with the number of images it added (for a progress bar).
    """
    if metric is None:
        metric = build_fid_metric(resolve_inception_weights(inception_weights), device=device)
    metric.reset()
    metric.real_features_sum.zero_()
    metric.real_features_cov_sum.zero_()
    metric.real_features_num_samples.zero_()
    seen = 0
    for batch in images:
        if batch.dim() == 3:
            batch = batch.unsqueeze(0)
        if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[1] != 3:
            raise ValueError(
                f"reference images must be uint8 (B, 3, H, W), got {batch.dtype} {tuple(batch.shape)}"
            )
        if resolution is not None and tuple(batch.shape[-2:]) != (resolution, resolution):
            raise ValueError(f"expected {resolution}x{resolution} images, got {tuple(batch.shape[-2:])}")
        if max_images is not None:
            batch = batch[: max_images - seen]
        if len(batch):
            metric.update(batch.to(metric.device), real=True)
            seen += len(batch)
            if on_batch is not None:
                on_batch(len(batch))
        if max_images is not None and seen >= max_images:
            break
    if seen < 2:
        raise ValueError(f"need at least 2 reference images, got {seen} (source: {source or 'iterable'})")
    stats = stats_from_metric(metric, real=True)
    return ReferenceStats(stats.mu, stats.sigma, count=stats.count, resolution=resolution, source=source)
