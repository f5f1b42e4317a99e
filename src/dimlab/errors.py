"""Bad input: a file or an argument that is not what was expected.

A command that meets one prints its message as one line (``dimlab CMD: error: ...``) and exits with status 2,
without a traceback (:mod:`dimlab.commands.main`; ``--debug`` or ``DIMLAB_DEBUG=1`` shows it). Each class also
derives from the built-in exception that Python code catches for that mistake (``ValueError``,
``FileNotFoundError``), so library callers need not know these names.
"""

from __future__ import annotations

__all__ = [
    "BadArgumentError",
    "CheckpointFileError",
    "InputError",
    "MissingFileError",
    "UntrustedCheckpointError",
]


class InputError(Exception):
    """A file or an argument is not what was expected; the message names it and says what was expected."""


class BadArgumentError(InputError, ValueError):
    """A command-line argument (or its Python counterpart) has a value that cannot work."""


class MissingFileError(InputError, FileNotFoundError):
    """A file that the input names does not exist."""


class CheckpointFileError(InputError, ValueError):
    """A file is not a readable checkpoint of the expected kind: empty, truncated, not a torch file, or other."""


class UntrustedCheckpointError(CheckpointFileError):
    """A checkpoint holds pickled Python objects that only a trusted load may unpickle (they can run code)."""
