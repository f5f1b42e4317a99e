"""Image shards -> latent shards of Stable-Diffusion VAE posterior moments (image and its horizontal flip).

Each output sample keeps the source key and label and holds two float16 arrays of shape (8, h, w)
(mean and logvar of the 4-channel posterior): ``moments.npy`` for the image and ``moments_flip.npy`` for
its horizontal flip, so training can pick the flip per sample (DiM's 512 recipe bakes both into the data
set). Output shards mirror the source shards one to one (same split and index).

The VAE runs in this process (on the GPU when present); image decoding runs in a thread pool, since PIL
releases the GIL while decoding.
"""

from __future__ import annotations

import functools
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from dimlab.data.manifest import read_manifest
from dimlab.data.transforms import decode_image, uint8_to_signed
from dimlab.data.vae import encode_moments, load_vae
from dimlab.data.writers import ShardJob, ShardSink, fingerprint, write_shards

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def npy_bytes(array: np.ndarray) -> bytes:
    """Serialise an array in .npy format (what webdataset's ``npy`` decoder reads)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _decode_or_none(sample: dict[str, Any]) -> tuple[np.ndarray | None, str | None]:
    """(RGB uint8 image, None), or (None, reason) when the sample has no readable image member."""
    member = next((key for key in ("jpg", "png", "jpeg") if key in sample), None)
    if member is None:
        return None, f"no jpg/png member (has {sorted(k for k in sample if not k.startswith('__'))})"
    try:
        return decode_image(sample[member], channels=3), None
    except Exception as exc:  # noqa: BLE001 - any undecodable member is reported and skipped
        return None, f"{type(exc).__name__}: {exc}"


def _encode_batch(vae, batch: list[tuple[dict[str, Any], np.ndarray]], sink: ShardSink) -> None:
    pixels = uint8_to_signed(torch.from_numpy(np.stack([image for _, image in batch])).permute(0, 3, 1, 2))
    both = torch.cat([pixels, pixels.flip(dims=[3])])
    moments = encode_moments(vae, both).float().cpu().numpy().astype(np.float16)
    originals, flips = moments[: len(batch)], moments[len(batch) :]
    for (sample, _), original, flipped in zip(batch, originals, flips, strict=True):
        label = int(sample["cls"])
        members = {
            "moments.npy": npy_bytes(original),
            "moments_flip.npy": npy_bytes(flipped),
            "cls": sample["cls"],
        }
        sink.write(sample["__key__"], members, label)


def build_latent_shard(vae, batch_size: int, threads: int, job: ShardJob, sink: ShardSink, advance) -> None:
    """Encode every image of the source shard ``job.payload`` (and its flip) in batches."""
    pipeline = wds.DataPipeline(wds.SimpleShardList([job.payload]), wds.tarfile_to_samples())
    with ThreadPoolExecutor(max_workers=max(threads, 1)) as pool:
        pending: list[dict[str, Any]] = []

        def flush() -> None:
            decoded = pool.map(_decode_or_none, pending)
            batch = []
            for sample, (image, error) in zip(pending, decoded, strict=True):
                if image is None:
                    sink.skip(f"{job.payload}:{sample['__key__']}", error)
                else:
                    batch.append((sample, image))
            if batch:
                _encode_batch(vae, batch, sink)
            advance(len(pending))
            pending.clear()

        for sample in pipeline:
            pending.append(sample)
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()


def write_latent_shards(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    vae_path: str | os.PathLike,
    batch_size: int = 64,
    device: str = "auto",
    dtype: str = "fp32",
    threads: int = 4,
) -> dict[str, Any]:
    """Write latent shards for every split of the image shard directory ``src_dir``; returns the manifest."""
    src_dir = Path(src_dir)
    source = read_manifest(src_dir)
    if source["kind"] != "images":
        raise ValueError(
            f"{src_dir}/manifest.json: kind is {source['kind']!r}; expected image shards ('images')"
        )
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    if source.get("channels", 3) != 3:
        raise ValueError(
            f"{src_dir}: images have {source.get('channels')} channel(s); the SD VAE expects RGB"
        )
    jobs, identities = [], []
    for split, summary in source["splits"].items():
        for shard in summary["shards"]:
            index = int(shard["name"].rsplit("-", 1)[1].split(".")[0])
            jobs.append(ShardJob(split, index, str(src_dir / shard["name"]), shard["samples"]))
            identities.append(shard["sha256"])
    vae = load_vae(vae_path, resolve_device(device), DTYPES[dtype])
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if source["resolution"] % factor:
        raise ValueError(
            f"{src_dir}: images at resolution {source['resolution']}; the VAE downsamples by {factor}, so latent "
            f"shards need a multiple of {factor} (e.g. 256 or 512 for the SD VAE)"
        )
    latent_side = source["resolution"] // factor
    moments_shape = [2 * vae.config.latent_channels, latent_side, latent_side]
    manifest_fields = {
        "kind": "latents",
        "source": str(src_dir.resolve()),
        "resolution": source["resolution"],
        "moments_shape": moments_shape,
        "moments_dtype": "float16",
        "members": {
            "moments.npy": "posterior mean+logvar",
            "moments_flip.npy": "same for the h-flipped image",
        },
        "vae": str(Path(vae_path).resolve()),
        "encode_dtype": dtype,
        "num_classes": source.get("num_classes"),
        "class_names": source.get("class_names"),
    }
    settings = {"source": "latents", "vae": manifest_fields["vae"], "dtype": dtype}
    return write_shards(
        out_dir,
        jobs,
        functools.partial(build_latent_shard, vae, batch_size, threads),
        manifest_fields=manifest_fields,
        plan_hash=fingerprint(settings, identities),
        workers=1,
        description=f"latents on {vae.device}",
    )
