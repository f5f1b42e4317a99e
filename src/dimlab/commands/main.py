"""The ``dimlab`` dispatcher: the console script (also installed as ``lightning``) and ``python -m dimlab``.

``dimlab fit | validate | test`` go to LightningCLI (:mod:`dimlab.commands.fit`); every other subcommand is the
``main(argv) -> int`` of its own module, listed in :data:`SUBCOMMANDS`. A command's module, and with it torch or
Lightning, is imported only once that command is chosen, so ``dimlab --help`` and ``dimlab sample --help`` start
without Lightning (importing it takes seconds).

Bad input (:class:`dimlab.errors.InputError`: a file or an argument that is not what was expected) ends a
subcommand with one ``dimlab CMD: error: ...`` line on stderr and exit status 2; ``--debug`` (anywhere on its
command line) or ``DIMLAB_DEBUG=1`` lets the exception through instead, traceback and all.
"""

from __future__ import annotations

import importlib
import os
import sys

from dimlab.errors import InputError

#: The LightningCLI subcommands (:class:`dimlab.commands.fit.DimlabCLI`), with one line of help each.
LIGHTNING_COMMANDS = {
    "fit": "train a model from a config (`dimlab fit --config experiments/...yaml`)",
    "validate": "run the validation loop of a config on a checkpoint (--ckpt_path)",
    "test": "run the test loop of a config on a checkpoint (--ckpt_path)",
}

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

#: Commands that LightningCLI would offer but dimlab does not, and what to run instead.
REMOVED_COMMANDS = {
    "predict": "`dimlab predict` is not offered: sample images with `dimlab sample --ckpt CKPT --num N --out DIR` "
    "(one device) or score them with `dimlab fid --ckpt CKPT ...` (several devices)",
}

#: Set (to anything but 0) to see the traceback of a bad-input error instead of one line; same as ``--debug``.
DEBUG_ENV = "DIMLAB_DEBUG"

DESCRIPTION = "dimlab: DiM / U-ViT diffusion experiments.\n\nOther commands: " + "; ".join(
    f"dimlab {name} ({text})" for name, (_, text) in SUBCOMMANDS.items()
)


def command_list() -> str:
    """What ``dimlab`` and ``dimlab --help`` print: every subcommand with one line of help."""
    rows = [*LIGHTNING_COMMANDS.items(), *((name, text) for name, (_, text) in SUBCOMMANDS.items())]
    width = max(len(name) for name, _ in rows)
    lines = [
        "usage: dimlab COMMAND [options]   (`dimlab COMMAND --help` for a command's options)",
        "",
        "DiM / U-ViT diffusion experiments. Commands:",
        *(f"  {name:<{width}}  {text}" for name, text in rows),
        "",
        f"Bad input ends with one error line and exit status 2; --debug or {DEBUG_ENV}=1 shows the traceback.",
        "`lightning` is the same command as `dimlab`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dimlab`` (and ``lightning``) console script and ``python -m dimlab``."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(command_list())
        return 0 if argv else 2
    command = argv[0]
    if command in LIGHTNING_COMMANDS:
        _prepare_torch()
        fit = importlib.import_module("dimlab.commands.fit")
        # Without explicit argv LightningCLI reads sys.argv itself (passing both makes it warn).
        cli = fit.DimlabCLI(args=None if from_command_line else argv, description=DESCRIPTION)
        return cli.exit_code  # 128 + signal after a pre-emption stop, else 0
    if command in REMOVED_COMMANDS:
        print(f"dimlab: error: {REMOVED_COMMANDS[command]}", file=sys.stderr)
        return 2
    if command not in SUBCOMMANDS:
        known = ", ".join([*LIGHTNING_COMMANDS, *SUBCOMMANDS])
        print(f"dimlab: error: unknown command {command!r}; expected one of {known}", file=sys.stderr)
        return 2
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    module = importlib.import_module(SUBCOMMANDS[command][0])
    _prepare_torch()
    try:
        return int(module.main([a for a in argv[1:] if a != "--debug"]) or 0)
    except InputError as err:
        if debug:
            raise
        print(f"dimlab {command}: error: {err}", file=sys.stderr)
        return 2


def _prepare_torch() -> None:
    # The selective scan's decays drive CPU states into subnormal floats, which x86 handles ~10x slower; no
    # model output depends on values below 1e-38. (No effect on GPUs.) torch is imported here, not at the top,
    # so that `dimlab --help` and the command list start without it.
    import torch

    torch.set_flush_denormal(True)
