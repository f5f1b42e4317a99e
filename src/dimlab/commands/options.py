"""Command-line options that several subcommands share."""

from __future__ import annotations

import argparse

from dimlab.diffusion.fast_eval import PRECISIONS


def add_fast_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """``--precision`` and ``--cuda-graphs`` (shared by ``dimlab sample`` and ``dimlab fid``)."""
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
