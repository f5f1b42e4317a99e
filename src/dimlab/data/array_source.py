"""Shards from in-memory uint8 image arrays with labels (used by the CIFAR-10 and digits writers)."""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from dimlab.data.transforms import IMAGE_EXTENSIONS, encode_image
from dimlab.data.writers import ShardJob, ShardSink, fingerprint, plan_jobs, sample_key, write_shards


def build_array_shard(image_format: str, job: ShardJob, sink: ShardSink, advance) -> None:
    """Encode a shard's ``(pixels, label)`` items; pixels are (H, W) grey or (H, W, 3) RGB uint8."""
    start, items = job.payload
    extension = IMAGE_EXTENSIONS[image_format]
    for offset, (pixels, label) in enumerate(items):
        members = {extension: encode_image(pixels, image_format), "cls": str(int(label)).encode()}
        sink.write(sample_key(job.split, start + offset), members, int(label))


def write_array_shards(
    out_dir: str | os.PathLike,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    source: str,
    source_id: str,
    class_names: list[str],
    image_format: str = "png",
    shard_size: int = 1000,
    workers: int = 1,
    description: str = "writing shards",
) -> dict[str, Any]:
    """Write ``{split: (images (N, H, W[, 3]) uint8, labels (N,))}`` as image shards; returns the manifest.

    ``source_id`` identifies the exact source data (e.g. the archive hash) so a resumed run into the same
    directory is refused when the source changed.
    """
    shapes = {split: images.shape for split, (images, _) in splits.items()}
    first_shape = next(iter(shapes.values()))
    if any(shape[1:] != first_shape[1:] for shape in shapes.values()) or first_shape[1] != first_shape[2]:
        raise ValueError(f"{source}: expected square images of one size in every split, got shapes {shapes}")
    for split, (images, labels) in splits.items():
        if images.dtype != np.uint8 or len(images) != len(labels):
            raise ValueError(
                f"{source}/{split}: expected uint8 images and one label per image, "
                f"got dtype {images.dtype}, {len(images)} images, {len(labels)} labels"
            )
    items = {
        split: list(zip(images, labels.tolist(), strict=True)) for split, (images, labels) in splits.items()
    }
    jobs = plan_jobs(items, shard_size)
    settings = {"source": source, "source_id": source_id, "format": image_format, "shard_size": shard_size}
    manifest_fields = {
        "kind": "images",
        "source": source,
        "resolution": int(first_shape[1]),
        "channels": 1 if len(first_shape) == 3 else int(first_shape[3]),
        "image_format": image_format,
        "num_classes": len(class_names),
        "class_names": class_names,
    }
    return write_shards(
        out_dir,
        jobs,
        functools.partial(build_array_shard, image_format),
        manifest_fields=manifest_fields,
        plan_hash=fingerprint(settings, []),
        workers=workers,
        description=description,
    )
