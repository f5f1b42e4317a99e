"""Moved to :mod:`dimlab.commands` (the dispatcher :mod:`dimlab.commands.main`, LightningCLI
:mod:`dimlab.commands.fit`); importable here for one release. ``DimlabCLI`` is imported on first use, so the old
console-script target ``dimlab.cli:main`` starts as fast as the new one."""

from __future__ import annotations

import importlib
from typing import Any

from dimlab.commands.main import DESCRIPTION, SUBCOMMANDS, main

EXTRA_COMMANDS = SUBCOMMANDS

__all__ = ["DESCRIPTION", "EXTRA_COMMANDS", "DimlabCLI", "main"]  # noqa: F822 - DimlabCLI: __getattr__


def __getattr__(name: str) -> Any:
    if name == "DimlabCLI":
        return importlib.import_module("dimlab.commands.fit").DimlabCLI
    raise AttributeError(f"module 'dimlab.cli' has no attribute {name!r}")
