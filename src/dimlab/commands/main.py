"""The ``dimlab`` dispatcher: the console script and ``python -m dimlab``.

``dimlab fit | validate | test | predict`` go to LightningCLI (:mod:`dimlab.commands.fit`); every other
subcommand is the ``main(argv) -> int`` of its own module, listed in :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import importlib
import sys

import torch

from dimlab.commands.fit import DimlabCLI

#: subcommand -> (module with ``main(argv) -> int``, one line of help). Imported only when that subcommand runs.
SUBCOMMANDS = {
    "sample": ("dimlab.commands.sample", "generate images (PNGs, grid, .npz) from a checkpoint"),
    "shards": ("dimlab.commands.shards", "write WebDataset shards (cifar10, imagefolder, digits, latents)"),
    "fid": ("dimlab.commands.fid", "FID of a checkpoint, an image folder or an .npz; reference statistics"),
    "convert-official": (
        "dimlab.commands.convert_official",
        "convert official DiM weights to/from dimlab checkpoints",
    ),
    "ablate": ("dimlab.commands.ablate", "run / dry-run / emit a W&B sweep for an ablation matrix"),
    "check-finetune": (
        "dimlab.commands.check_finetune",
        "check a weak-to-strong fine-tune's config, checkpoint and data before `dimlab fit`",
    ),
}

DESCRIPTION = "dimlab: DiM / U-ViT diffusion experiments.\n\nOther commands: " + "; ".join(
    f"dimlab {name} ({text})" for name, (_, text) in SUBCOMMANDS.items()
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dimlab`` console script and ``python -m dimlab``."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    # The selective scan's decays drive CPU states into subnormal floats, which x86 handles ~10x slower; no
    # model output depends on values below 1e-38. (No effect on GPUs.)
    torch.set_flush_denormal(True)
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    # Without explicit argv LightningCLI reads sys.argv itself (passing both makes it warn).
    cli = DimlabCLI(args=None if from_command_line else argv, description=DESCRIPTION)
    return cli.exit_code
