"""Weak-to-strong fine-tuning at toy scale on CPU: digits at 8 px, then fine-tuned at 16 px via ``init_from``.

The recipe of the DiM 256 -> 512 fine-tune (docs/highres.md, "Fine-tuning 256 -> 512"), shrunk to the embedded digits data:

1. write digit shards at the low and the high size (``dimlab shards digits OUT --size 8`` / ``--size 16``);
2. train a small class-conditional DiM at the low size (4x4 tokens) and save a Lightning checkpoint;
3. build the same DiM at the high size (8x8 tokens, ``rho_pad`` pad fill as the 512 model) twice from the same
   seed: once fresh, once through ``DiffusionModule(init_from=low_ckpt)``, which copies every tensor and resizes
   the position table bilinearly (the report of resized / newly initialised tensors is printed);
4. measure both at step 0 on the high-size validation split (epsilon loss with fixed times and noise), then
   fine-tune both with the same data order, noise and recipe and compare the mean loss of the first K steps.

The initialised model starts far lower, which is the point of weak-to-strong training: the 512 model does not
relearn what the 256 model knows. ``make finetune-demo`` runs :func:`main`; a JSON report and a table come out.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from rich.table import Table

from dimlab.console import make_console
from dimlab.data.datamodule import ShardDataModule
from dimlab.data.digits import write_digits_shards
from dimlab.diffusion.loss import epsilon_loss
from dimlab.lit.module import DiffusionModule
from dimlab.lit.progress import DimlabProgressBar
from dimlab.models.dim import DiM

NUM_CLASSES = 10


@dataclass
class DemoSettings:
    """Sizes and steps of the demo. The defaults take several minutes on 2 CPU cores (the scan runs in PyTorch)."""

    low: int = 8
    high: int = 16
    hidden_size: int = 48
    depth: int = 5
    d_state: int = 8
    batch_size: int = 16
    pretrain_steps: int = 200
    finetune_steps: int = 20
    eval_batches: int = 2
    lr: float = 2e-3
    seed: int = 0
    scan_backend: str = "auto"


class LossRecorder(L.Callback):
    """Keeps the training loss of every step (the value ``training_step`` returned)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()))


def ensure_digit_shards(root: str | Path, size: int) -> Path:
    """``root/digits{size}``: digit shards at ``size`` px, written unless a manifest is already there."""
    folder = Path(root) / f"digits{size}"
    if not (folder / "manifest.json").is_file():
        write_digits_shards(folder, size=size)
    return folder


def make_backbone(settings: DemoSettings, size: int, pad_fill: str):
    """The demo DiM at ``size`` px (patch 2, 1 channel, 10 classes), initialised from ``settings.seed``."""
    torch.manual_seed(settings.seed)
    return DiM(
        input_size=size,
        patch_size=2,
        in_channels=1,
        hidden_size=settings.hidden_size,
        depth=settings.depth,
        num_classes=NUM_CLASSES,
        d_state=settings.d_state,
        pad_fill=pad_fill,
        scan_backend=settings.scan_backend,
    )


def make_module(
    settings: DemoSettings, size: int, pad_fill: str, init_from: str | None = None
) -> DiffusionModule:
    """A DiffusionModule with the demo recipe; ``init_from`` loads the raw weights of a low-size checkpoint.

    The raw (non-EMA) weights are used: after a short pre-training the EMA still remembers the random init, and
    the official fine-tune also prefers ``nnet.pth`` when it exists (docs/highres.md).
    """
    return DiffusionModule(
        make_backbone(settings, size, pad_fill),
        schedule="sd_discrete",
        p_uncond=0.1,
        lr=settings.lr,
        betas=(0.9, 0.99),
        adam_eps=1e-8,
        weight_decay=0.0,
        warmup_steps=0,
        ema_decay=0.99,
        seed=settings.seed,
        init_from=init_from,
        init_from_ema=False,
    )


def make_data(shards: Path, size: int, settings: DemoSettings):
    """The real shard DataModule over ``shards`` (train and val splits), single-process and unflipped."""
    return ShardDataModule(
        train_shards=str(shards),
        val_shards=str(shards),
        resolution=size,
        num_classes=NUM_CLASSES,
        kind="pixels",
        channels=1,
        batch_size=settings.batch_size,
        num_workers=0,
        shuffle_buffer=128,  # the default 1000 decodes 1000 PNGs before the first step of every run
        flip=False,
        seed=settings.seed,
    )


def train(
    module: DiffusionModule, data, steps: int, root: Path, progress: bool = False, save_to: Path | None = None
) -> list[float]:
    """Fit ``module`` for ``steps`` optimizer steps on CPU (checkpoint to ``save_to``); the loss of every step."""
    recorder = LossRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(root),
        callbacks=[recorder, DimlabProgressBar()] if progress else [recorder],
    )
    trainer.fit(module, datamodule=data)
    if save_to is not None:
        trainer.save_checkpoint(save_to)
    return recorder.losses


@torch.no_grad()
def evaluation_loss(module: DiffusionModule, data, batches: int, seed: int) -> float:
    """Mean epsilon loss of the raw backbone on the first ``batches`` validation batches.

    Times and noise come from a generator seeded per batch, so two models see exactly the same noisy inputs;
    labels are the true classes (no dropout).
    """
    data.setup("validate")
    module.backbone.eval()
    losses = []
    for i, batch in enumerate(data.val_dataloader()):
        if i == batches:
            break
        g = torch.Generator().manual_seed(seed + i)
        losses.append(
            epsilon_loss(module.backbone, module.schedule, batch["x"], batch["y"].long(), generator=g)
        )
    module.backbone.train()
    if not losses:
        raise ValueError(f"{data.val_shards}: the validation split yielded no batch")
    return float(torch.cat(losses).mean())


def run_demo(settings: DemoSettings, data_root: str | Path, out: str | Path, progress: bool = False) -> dict:
    """Pre-train at ``settings.low``, then fine-tune vs train fresh at ``settings.high``; returns the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    low_shards = ensure_digit_shards(data_root, settings.low)
    high_shards = ensure_digit_shards(data_root, settings.high)
    t0 = time.perf_counter()

    low = make_module(settings, settings.low, pad_fill="lateral")
    low_ckpt = out / "low" / "last.ckpt"
    low_data = make_data(low_shards, settings.low, settings)
    pretrain_losses = train(low, low_data, settings.pretrain_steps, out / "low", progress, save_to=low_ckpt)
    pretrain_seconds = time.perf_counter() - t0

    runs = {}
    for name, init_from in (("fresh", None), ("finetuned", str(low_ckpt))):
        module = make_module(settings, settings.high, pad_fill="rho_pad", init_from=init_from)
        data = make_data(high_shards, settings.high, settings)
        step0 = evaluation_loss(module, data, settings.eval_batches, settings.seed)
        losses = train(module, data, settings.finetune_steps, out / name, progress=progress)
        report = module.init_report
        runs[name] = {
            "eval_loss_step0": step0,
            "eval_loss_end": evaluation_loss(module, data, settings.eval_batches, settings.seed),
            "train_losses": losses,
            "mean_train_loss": sum(losses) / len(losses) if losses else float("nan"),
            "resized": report.resized if report else [],
            "newly_initialised": report.newly_initialised if report else [],
            "copied": len(report.copied) if report else 0,
        }
    result = {
        "settings": asdict(settings),
        "low_checkpoint": str(low_ckpt),
        "pretrain_final_loss": sum(pretrain_losses[-10:]) / max(1, len(pretrain_losses[-10:])),
        "pretrain_seconds": pretrain_seconds,
        "total_seconds": time.perf_counter() - t0,
        **runs,
        "step0_ratio": runs["finetuned"]["eval_loss_step0"] / runs["fresh"]["eval_loss_step0"],
        "first_k_ratio": runs["finetuned"]["mean_train_loss"] / runs["fresh"]["mean_train_loss"],
    }
    (out / "finetune_demo.json").write_text(json.dumps(result, indent=2))
    return result


def print_report(result: dict) -> None:
    """A short rich table of the comparison."""
    s = result["settings"]
    ft, fresh = result["finetuned"], result["fresh"]
    table = Table(
        title=f"weak-to-strong on digits: {s['low']} px -> {s['high']} px (same seed, same data and noise)"
    )
    table.add_column("")
    table.add_column("fresh", justify="right")
    table.add_column(f"init_from {s['low']} px", justify="right")
    table.add_row("eval loss at step 0", f"{fresh['eval_loss_step0']:.4f}", f"{ft['eval_loss_step0']:.4f}")
    k = s["finetune_steps"]
    table.add_row(
        f"mean train loss, first {k} steps", f"{fresh['mean_train_loss']:.4f}", f"{ft['mean_train_loss']:.4f}"
    )
    table.add_row(f"eval loss after {k} steps", f"{fresh['eval_loss_end']:.4f}", f"{ft['eval_loss_end']:.4f}")
    console = make_console()
    console.print(
        f"init_from: {ft['copied']} tensors copied, resized {ft['resized']}, newly initialised "
        f"{ft['newly_initialised'] or 'none'}; pre-training {s['pretrain_steps']} steps at {s['low']} px "
        f"(final loss {result['pretrain_final_loss']:.4f}, {result['pretrain_seconds']:.0f} s)"
    )
    console.print(table)
    console.print(
        f"fine-tuned / fresh: {result['step0_ratio']:.2f} at step 0, {result['first_k_ratio']:.2f} over the first "
        f"{k} steps; report in {Path(result['low_checkpoint']).parents[1] / 'finetune_demo.json'}"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m dimlab.demos.finetune``: run the demo and print the comparison."""
    defaults = DemoSettings()
    parser = argparse.ArgumentParser(prog="python -m dimlab.demos.finetune", description=__doc__)
    parser.add_argument("--data-root", default="data", help="digit shards go to DATA_ROOT/digits{8,16}")
    parser.add_argument("--out", default="runs/finetune_demo")
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    data_root, out = args.pop("data_root"), args.pop("out")
    settings = DemoSettings(**args)
    if settings.high <= settings.low or settings.high % 2 or settings.low % 2:
        parser.error(
            f"--high {settings.high} must be larger than --low {settings.low}, both even (patch size 2)"
        )
    result = run_demo(settings, data_root, out, progress=True)
    print_report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
