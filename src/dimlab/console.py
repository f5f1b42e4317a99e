"""Rich consoles for dimlab's commands: the usual ones on a terminal; in logs and pipes, long lines stay whole.

When the output is not a terminal (a SLURM log, ``| tee``, a captured subprocess) Rich lays everything out for 80
columns and breaks every longer line, paths and messages included, which makes logs hard to read and to grep.
There, dimlab's consoles never wrap text and give tables :data:`NON_TERMINAL_WIDTH` columns (``COLUMNS`` in the
environment still sets the width).
"""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console

__all__ = ["NON_TERMINAL_WIDTH", "console_options", "make_console"]

#: Columns for tables when the output is not a terminal.
NON_TERMINAL_WIDTH = 160


def console_options(stderr: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``rich.console.Console`` (and Lightning's ``RichProgressBar(console_kwargs=...)``):
    none on a terminal; otherwise no wrapping of text and :data:`NON_TERMINAL_WIDTH` columns."""
    if Console(stderr=stderr).is_terminal:
        return {}
    options: dict[str, Any] = {"soft_wrap": True}
    if "COLUMNS" not in os.environ:
        options["width"] = NON_TERMINAL_WIDTH
    return options


def make_console(stderr: bool = False) -> Console:
    """A Rich console on stdout (``stderr=True``: stderr) with :func:`console_options`."""
    return Console(stderr=stderr, **console_options(stderr))
