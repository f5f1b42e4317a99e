"""Command-line options that several subcommands share."""

from __future__ import annotations

import argparse

from dimlab.diffusion.fast_eval import PRECISIONS


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
        action="store_true",
        help="run the backbone through torch.compile (one compilation per batch shape, tens of seconds for "
        "DiM-H/2; pays off over many batches)",
    )


def add_trust_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint``: the explicit opt-in to unpickle arbitrary objects (every command that reads one)."""
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="also unpickle Python objects other than tensors and plain data; unpickling can run arbitrary "
        "code, so only for files you trust (without it such files are refused)",
    )
