"""``dimlab check-finetune``: a weak-to-strong fine-tune's pre-flight check, before ``dimlab fit`` starts any device.

``make finetune-512`` calls ``dimlab check-finetune --config CFG --ckpt CKPT --data DATA`` and only then
``dimlab fit``. The check:

1. reads the fit config (``model.backbone``, ``model.init_from_ema``, ``data``);
2. opens the low-resolution checkpoint on the meta device (shapes only, no tensor data is read, so a
   multi-GB DiM-H checkpoint takes milliseconds) and runs the real
   :func:`dimlab.models.checkpoint.load_weights_adapting` against the fine-tune backbone, also built on the meta
   device: every tensor must match except the position table, which is resized;
3. resolves the data through the real :class:`dimlab.data.datamodule.ShardDataModule` (``setup("fit")``:
   manifest present, shards present, kind / resolution / classes as configured) and checks that the data
   resolution fits the backbone (latents: ``resolution / SD_VAE_FACTOR`` and the stored moment shape).

Exit status 0 when everything fits, 2 with one ``error:`` line naming the file, key and value otherwise.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from dimlab.data.datamodule import ShardDataModule
from dimlab.data.vae import SD_VAE_FACTOR
from dimlab.models.checkpoint import load_weights_adapting, read_backbone_file
from dimlab.models.spec import build_from_spec


class FinetuneInputError(ValueError):
    """An input of the fine-tune is missing or does not fit the config; the message says which and why."""


@dataclass
class FinetuneInputs:
    """What the check found (printed by :func:`main`)."""

    checkpoint: str
    source_grid: tuple[int, int] | None
    target_grid: tuple[int, int] | None
    copied: int
    resized: list[str] = field(default_factory=list)
    newly_initialised: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    data: str = ""
    train_shards: int = 0
    train_samples: int | None = None


def read_fit_config(path: str | Path) -> dict[str, Any]:
    """The fit config as plain containers, omegaconf interpolations resolved (as ``dimlab fit`` reads it)."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneInputError(f"--config {path}: file not found")
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    for key in ("model", "data"):
        if not isinstance(config.get(key), dict):
            raise FinetuneInputError(f"{path}: no '{key}' section; expected a `dimlab fit` config")
    backbone = config["model"].get("backbone")
    if not isinstance(backbone, dict) or "class_path" not in backbone:
        raise FinetuneInputError(f"{path}: model.backbone must have a class_path (and init_args)")
    return config


def check_checkpoint(config: dict[str, Any], ckpt: str | Path) -> FinetuneInputs:
    """Load ``ckpt``'s shapes into the config's backbone on the meta device; FinetuneInputError on a mismatch."""
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FinetuneInputError(
            f"CKPT_256 / --ckpt {ckpt}: checkpoint not found (a dimlab training checkpoint such as "
            "runs/imagenet256_dim_h2/checkpoints/last.ckpt, or `dimlab convert-official nnet_ema.pth OUT.pt`)"
        )
    ema = bool(config["model"].get("init_from_ema", True))
    try:
        _, weights = read_backbone_file(ckpt, map_location="meta", ema=ema)
    except (ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise FinetuneInputError(f"--ckpt {ckpt}: cannot read it as a dimlab checkpoint: {err}") from err
    spec = config["model"]["backbone"]
    with torch.device("meta"):
        model = build_from_spec({"class_path": spec["class_path"], "init_args": spec.get("init_args", {})})
    try:
        report = load_weights_adapting(model, weights)
    except ValueError as err:
        raise FinetuneInputError(
            f"--ckpt {ckpt} does not fit model.backbone of the config ({spec['class_path']}): {err}"
        ) from err
    target = tuple(getattr(model, "grid_size", ())) or None
    source = None
    if "pos_embed" in weights and target is not None:
        extra = model.pos_embed.shape[1] - target[0] * target[1]
        side = int((weights["pos_embed"].shape[1] - extra) ** 0.5)
        source = (side, side)
    return FinetuneInputs(
        checkpoint=str(ckpt),
        source_grid=source,
        target_grid=target,
        copied=len(report.copied),
        resized=report.resized,
        newly_initialised=report.newly_initialised,
        ignored=report.unexpected,
    )


def check_data(config: dict[str, Any], data: str | Path) -> tuple[int, int | None]:
    """Resolve ``data`` as the config's training shards; returns (number of shards, samples or None)."""
    data = str(data)
    if not Path(data).exists() and not any(c in data for c in "{*?["):
        raise FinetuneInputError(
            f"DATA_512 / --data {data}: not found (a shard folder written by `dimlab shards latents`)"
        )
    options = {**config["data"], "train_shards": data, "val_shards": None}
    try:
        module = ShardDataModule(**options)
        module.setup("fit")
    except TypeError as err:
        raise FinetuneInputError(f"data section of the config: {err}") from err
    except (ValueError, FileNotFoundError) as err:
        raise FinetuneInputError(str(err)) from err
    _check_data_fits_backbone(config, module)
    return len(module.train_set.urls), module.train_set.num_samples


def _check_data_fits_backbone(config: dict[str, Any], module) -> None:
    init_args = config["model"]["backbone"].get("init_args", {})
    size = init_args.get("input_size")
    if size is None:
        return
    expected = (size, size) if isinstance(size, int) else tuple(size)
    latent = module.kind == "latents" or config["model"].get("vae_path") is not None
    side = module.resolution // SD_VAE_FACTOR if latent else module.resolution
    if (side, side) != expected:
        what = f"data.resolution {module.resolution} / {SD_VAE_FACTOR}" if latent else "data.resolution"
        raise FinetuneInputError(
            f"{what} = {side} but model.backbone.init_args.input_size is {size}: the fine-tune model must be built "
            "for the data's size"
        )
    manifest = module.train_set.manifest or {}
    moments = manifest.get("moments_shape")
    channels = init_args.get("in_channels")
    if moments and channels and tuple(moments) != (2 * channels, *expected):
        raise FinetuneInputError(
            f"{module.train_shards}/manifest.json: moments_shape {list(moments)} but the backbone expects "
            f"{[2 * channels, *expected]} (mean and log-variance of {channels} latent channels)"
        )


def check_finetune_inputs(config: str | Path, ckpt: str | Path, data: str | Path) -> FinetuneInputs:
    """Run every check (config, then checkpoint, then data); FinetuneInputError names the first problem."""
    cfg = read_fit_config(config)
    found = check_checkpoint(cfg, ckpt)
    found.data = str(data)
    found.train_shards, found.train_samples = check_data(cfg, data)
    return found


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring. Returns the exit status (0 ok, 2 a problem)."""
    parser = argparse.ArgumentParser(prog="dimlab check-finetune", description=__doc__)
    parser.add_argument("--config", required=True, help="the fine-tune's `dimlab fit` config")
    parser.add_argument("--ckpt", required=True, help="low-resolution checkpoint (model.init_from)")
    parser.add_argument(
        "--data", required=True, help="training shards at the new resolution (data.train_shards)"
    )
    args = parser.parse_args(argv)
    try:
        found = check_finetune_inputs(args.config, args.ckpt, args.data)
    except FinetuneInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    grids = ""
    if found.source_grid and found.target_grid:
        grids = f" (token grid {found.source_grid[0]}x{found.source_grid[1]} -> {found.target_grid[0]}x{found.target_grid[1]})"
    print(
        f"checkpoint {found.checkpoint}: {found.copied} tensors copied, resized {found.resized or 'none'}{grids}"
    )
    if found.newly_initialised:
        print(f"  newly initialised (not in the checkpoint): {found.newly_initialised}")
    if found.ignored:
        print(f"  in the checkpoint but not in the model (ignored): {found.ignored}")
    samples = "unknown" if found.train_samples is None else str(found.train_samples)
    print(f"data {found.data}: {found.train_shards} shard(s), {samples} training samples")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
