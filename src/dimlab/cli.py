"""Moved to :mod:`dimlab.commands` (the dispatcher :mod:`dimlab.commands.main`, LightningCLI
:mod:`dimlab.commands.fit`); importable here for one release."""

from dimlab.commands.fit import DimlabCLI
from dimlab.commands.main import DESCRIPTION, SUBCOMMANDS, main

EXTRA_COMMANDS = SUBCOMMANDS

__all__ = ["DESCRIPTION", "EXTRA_COMMANDS", "DimlabCLI", "main"]
