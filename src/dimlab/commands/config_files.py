"""YAML errors in ``--config`` files, named with the file.

jsonargparse reads each ``--config`` file into a string before parsing it, so a YAML error says ``in "<unicode
string>", line 3`` and never which of several ``--config`` files (a recipe, an overlay, a sweep's) is broken.
:func:`config_file_problem` checks the files first and names the file, line and column in one line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import yaml

__all__ = ["config_file_paths", "config_file_problem"]

_CONFIG_FLAGS = ("--config", "-c")


def config_file_paths(args: Sequence[str]) -> list[str]:
    """The existing files given to ``--config`` / ``-c`` in ``args`` (``--config X`` and ``--config=X``), in order.

    Values that are not files (a YAML string on the command line) are left to jsonargparse.
    """
    paths = []
    for i, arg in enumerate(args):
        value = None
        if arg in _CONFIG_FLAGS and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        if value is not None and os.path.isfile(value):
            paths.append(value)
    return paths


def config_file_problem(args: Sequence[str]) -> str | None:
    """One line naming the first ``--config`` file of ``args`` that is not valid YAML, and where; None if all are."""
    for path in config_file_paths(args):
        try:
            with open(path) as handle:
                yaml.safe_load(handle)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            context = (
                f" ({err.context} at line {err.context_mark.line + 1})"
                if err.context and err.context_mark
                else ""
            )
            return f"--config {path}: not valid YAML{where}: {err.problem}{context}"
        except yaml.YAMLError as err:
            return f"--config {path}: not valid YAML: {err}"
        except UnicodeDecodeError as err:
            return f"--config {path}: not a text file ({err.reason} at byte {err.start})"
    return None
