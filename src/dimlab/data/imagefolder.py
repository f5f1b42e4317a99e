"""ImageNet-style folder tree -> ADM-centre-cropped image shards with integer class labels.

Layouts: ``SRC/<class>/<image>`` is one split (``train`` unless ``split`` is given); ``SRC/<split>/<class>/
<image>`` with split folders named train / val / validation / test gives one shard set per split. Class ids
come from the sorted class folder names of the first split (torchvision ImageFolder order) or a class map.
As in torchvision, a class folder without image files is refused when the ids come from the folder names (it would
take an id and shift every later class); with a class map it is only reported. Broken symlinks are kept in the file
list so that they are reported and recorded as skipped like any other unreadable file.
"""

from __future__ import annotations

import functools
import json
import os
import random
from pathlib import Path
from typing import Any

from PIL import Image
from rich.console import Console

from dimlab.data.transforms import IMAGE_EXTENSIONS, adm_center_crop, encode_image
from dimlab.data.writers import ShardJob, ShardSink, fingerprint, plan_jobs, sample_key, write_shards

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm"}
SPLIT_FOLDERS = ("train", "val", "validation", "test")


def read_class_map(path: str | os.PathLike) -> dict[str, int]:
    """Read a class map: JSON ``{"folder": id}``, or text with one ``folder`` (id = line number) or
    ``folder id`` per line (e.g. an ImageNet synset list)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--class-map {path}: file not found")
    if path.suffix == ".json":
        mapping = json.loads(path.read_text())
        if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
            raise ValueError(f"--class-map {path}: expected a JSON object mapping folder name -> integer id")
        return mapping
    mapping = {}
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    for number, fields in enumerate(lines):
        if len(fields) == 1:
            mapping[fields[0]] = number
        elif len(fields) >= 2 and fields[1].lstrip("-").isdigit():
            mapping[fields[0]] = int(fields[1])
        else:
            raise ValueError(
                f"--class-map {path}: line {number + 1} {' '.join(fields)!r}; expected 'folder [id]'"
            )
    return mapping


def find_split_roots(src: Path, split: str | None = None) -> dict[str, Path]:
    """``{split: folder}``: the split folders under ``src`` or ``src`` itself as one split."""
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: source folder not found (expected SRC/<class>/<images>)")
    if split is not None:
        return {split: src}
    roots = {name: src / name for name in SPLIT_FOLDERS if (src / name).is_dir()}
    return roots or {"train": src}


def class_folders(root: Path) -> list[Path]:
    """The class folders directly under ``root``, sorted by name (torchvision ImageFolder order)."""
    return sorted(path for path in root.iterdir() if path.is_dir())


def _is_broken_symlink(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def list_images(root: Path, class_ids: dict[str, int]) -> tuple[list[tuple[str, int]], list[Path]]:
    """Sorted ``(relative path, class id)`` for every image file (or broken symlink named like one) under
    ``root/<class>/``, and the class folders that hold no readable image file."""
    items, empty = [], []
    for class_dir in class_folders(root):
        if class_dir.name not in class_ids:
            raise ValueError(
                f"{class_dir}: class folder not in the class map (known: {len(class_ids)} classes)"
            )
        readable = 0
        for path in sorted(class_dir.rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.is_file():
                readable += 1
            elif not _is_broken_symlink(path):
                continue
            items.append((str(path.relative_to(root)), class_ids[class_dir.name]))
        if readable == 0:
            empty.append(class_dir)
    return items, empty


def _check_empty_classes(empty: list[Path], ids_from_folders: bool, console: Console) -> None:
    """Refuse class folders without images when they define class ids; otherwise report them."""
    if not empty:
        return
    names = ", ".join(str(folder) for folder in empty)
    if ids_from_folders:
        raise ValueError(
            f"{names}: class folder(s) with no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); class ids are the "
            "sorted folder names, so each would take an id and shift the later classes. Remove them, or pass "
            "--class-map to fix the ids"
        )
    console.print(
        f"[yellow]warning:[/] {names}: class folder(s) with no image files; their classes get no samples"
    )


def build_imagefolder_shard(
    roots: dict[str, str],
    resolution: int,
    image_format: str,
    quality: int,
    job: ShardJob,
    sink: ShardSink,
    advance,
) -> None:
    """Read, crop and re-encode one shard's images; unreadable files are recorded as skipped."""
    start, items = job.payload
    extension = IMAGE_EXTENSIONS[image_format]
    for offset, (relative_path, label) in enumerate(items):
        path = os.path.join(roots[job.split], relative_path)
        if _is_broken_symlink(Path(path)):
            sink.skip(path, f"broken symlink to {os.readlink(path)}")
            continue
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            sink.skip(path, f"{type(exc).__name__}: {exc}")
            continue
        data = encode_image(adm_center_crop(rgb, resolution), image_format, quality)
        sink.write(
            sample_key(job.split, start + offset), {extension: data, "cls": str(label).encode()}, label
        )


def write_imagefolder_shards(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    resolution: int,
    image_format: str = "jpeg",
    quality: int = 95,
    shard_size: int = 1000,
    workers: int = 1,
    class_map: str | os.PathLike | None = None,
    split: str | None = None,
    seed: int = 0,
    console: Console | None = None,
) -> dict[str, Any]:
    """Write ``{split}-*.tar`` shards of ``resolution`` px centre crops; returns the manifest.

    Each split's file list is shuffled with ``seed`` before cutting shards so every shard mixes classes
    (resampled training reads whole shards, so class-sorted shards would give class-biased batches).
    Warnings and skipped files go to ``console`` (default: stderr).
    """
    if resolution < 1:
        raise ValueError(f"--resolution {resolution}: expected a positive number of pixels")
    src = Path(src)
    console = console or Console(stderr=True)
    roots = find_split_roots(src, split)
    if class_map is not None:
        class_ids = read_class_map(class_map)
    else:
        first_root = next(iter(roots.values()))
        class_ids = {p.name: i for i, p in enumerate(class_folders(first_root))}
    if not class_ids:
        raise ValueError(f"{src}: no class folders found (expected SRC/<class>/<images>)")
    items = {}
    for index, (split_name, root) in enumerate(roots.items()):
        split_items, empty = list_images(root, class_ids)
        # ids come from the first split's folders: an empty one there shifts ids, elsewhere it only lacks images
        _check_empty_classes(empty, ids_from_folders=class_map is None and index == 0, console=console)
        if not split_items:
            raise ValueError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
        random.Random(seed).shuffle(split_items)
        items[split_name] = split_items
    settings = {
        "source": "imagefolder",
        "resolution": resolution,
        "format": image_format,
        "quality": quality,
        "shard_size": shard_size,
        "seed": seed,
        "class_ids": class_ids,
    }
    identities = [(name, item) for name, split_items in items.items() for item in split_items]
    names_by_id = sorted(class_ids, key=class_ids.get)
    manifest_fields = {
        "kind": "images",
        "source": str(src.resolve()),
        "resolution": resolution,
        "channels": 3,
        "image_format": image_format,
        "jpeg_quality": quality if image_format == "jpeg" else None,
        "crop": "adm_center_crop",
        "num_classes": max(class_ids.values()) + 1,
        "class_names": names_by_id,
    }
    builder = functools.partial(
        build_imagefolder_shard,
        {name: str(root) for name, root in roots.items()},
        resolution,
        image_format,
        quality,
    )
    return write_shards(
        out_dir,
        plan_jobs(items, shard_size),
        builder,
        manifest_fields=manifest_fields,
        plan_hash=fingerprint(settings, identities),
        workers=workers,
        description=f"imagefolder {resolution}px shards",
        console=console,
    )
