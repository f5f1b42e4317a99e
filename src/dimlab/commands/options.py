"""Command-line options that several subcommands share."""

from __future__ import annotations

import argparse

from dimlab.diffusion.fast_eval import PRECISIONS, compile_backend
from dimlab.errors import BadArgumentError


def add_fast_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """``--precision``, ``--cuda-graphs`` and ``--compile`` (shared by ``dimlab sample`` and ``dimlab fid``)."""
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="network precision while sampling: fp32 (default) or bf16 autocast (faster on GPUs)",
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay each network evaluation from a CUDA graph (CUDA only; fastest at small batches)",
    )
    parser.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        metavar="BACKEND",
        help="run the backbone through torch.compile (Inductor unless a backend is named; one compilation per "
        "batch shape, tens of seconds for DiM-H/2; pays off over many batches)",
    )


def check_compile_argument(args: argparse.Namespace) -> None:
    """BadArgumentError naming ``--compile`` when its backend is not one torch.compile knows."""
    try:
        compile_backend(args.compile)
    except ValueError as err:
        raise BadArgumentError(f"--compile {args.compile}: {err}") from err


def add_trust_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint``: the explicit opt-in to unpickle arbitrary objects (every command that reads one)."""
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="also unpickle Python objects other than tensors and plain data; unpickling can run arbitrary "
        "code, so only for files you trust (without it such files are refused)",
    )
