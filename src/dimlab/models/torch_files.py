"""Reading torch files that may come from anyone: tensors and plain data only, unless the caller trusts the file.

``torch.load`` unpickles, and unpickling can run arbitrary code. :func:`read_checkpoint` therefore loads with
``weights_only=True`` plus :data:`SAFE_GLOBALS`, the few non-tensor types that dimlab and Lightning checkpoints
really hold, and never falls back to a full unpickle by itself: a file with other Python objects is refused
(:class:`~dimlab.errors.UntrustedCheckpointError`, naming the objects) unless the caller passes ``trusted=True``
(``--trust-checkpoint`` on the command line). Files that are not torch checkpoints at all (empty, truncated, text,
random bytes, a plain pickle) are told apart before anything is unpickled and get their own one-line error
(:class:`~dimlab.errors.CheckpointFileError`). See docs/backbone.md ("Loading").
"""

from __future__ import annotations

import importlib.util
import pathlib
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from dimlab.errors import CheckpointFileError, MissingFileError, UntrustedCheckpointError

__all__ = ["SAFE_GLOBALS", "TRUST_HINT", "read_checkpoint"]

#: What ``weights_only`` loading accepts besides torch's own allow-list (tensors, containers, numbers, strings).
#: dimlab and Lightning checkpoints are plain dicts of those (measured on ``dimlab fit`` checkpoints); a path
#: enters them when a module is built from Python with ``pathlib`` arguments (``init_from=Path(...)``), which
#: ``save_hyperparameters`` stores as given. A path is inert data: unpickling one runs no user code.
SAFE_GLOBALS: list[type] = [
    pathlib.PosixPath,
    pathlib.WindowsPath,
    pathlib.PurePosixPath,
    pathlib.PureWindowsPath,
]

#: How a refused file can still be loaded.
TRUST_HINT = "if you trust the file, load it with --trust-checkpoint (trusted=True in Python)"

#: The first bytes of a file written by ``torch.save`` in the legacy (pre-1.6, non-zip) format: a pickled magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_ZIP_MAGIC = b"PK\x03\x04"
_EXPECTED = "expected a checkpoint written by torch.save (.ckpt / .pt / .pth)"


def read_checkpoint(path: str | Path, map_location: Any = "cpu", trusted: bool = False) -> Any:
    """``torch.load`` of the checkpoint at ``path``: tensors, plain data and :data:`SAFE_GLOBALS` only.

    ``trusted=True`` unpickles everything (``weights_only=False``): only for files you trust. Raises
    :class:`~dimlab.errors.MissingFileError` when there is no file, :class:`~dimlab.errors.CheckpointFileError`
    when it is not a complete torch checkpoint, and :class:`~dimlab.errors.UntrustedCheckpointError` (a
    ``CheckpointFileError``) when it holds other Python objects and ``trusted`` is false; each message names the
    file and says what was expected.
    """
    path = Path(path)
    kind = _torch_file_kind(path)
    try:
        if trusted:
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not trusted:
            unsafe = _unsafe_globals(path, kind, err)
            if unsafe:
                raise UntrustedCheckpointError(
                    f"{path} holds pickled Python objects besides tensors and plain data ({', '.join(unsafe)}); "
                    f"not loaded, since unpickling them can run arbitrary code; {TRUST_HINT}"
                ) from err
        raise CheckpointFileError(f"{path} is damaged or truncated ({_reason(err)}); {_EXPECTED}") from err
    except EOFError as err:
        raise CheckpointFileError(f"{path} is truncated (it ends early); {_EXPECTED}") from err
    except RuntimeError as err:
        if "PytorchStreamReader" not in str(
            err
        ):  # not a problem of the file (e.g. map_location="cuda" on a CPU)
            raise
        raise CheckpointFileError(f"{path} is damaged ({_reason(err)}); {_EXPECTED}") from err


def _torch_file_kind(path: Path) -> str:
    """``"zip"`` or ``"legacy"`` for a torch checkpoint; CheckpointFileError saying what the file is otherwise."""
    if path.is_dir():
        raise CheckpointFileError(f"{path} is a folder; {_EXPECTED}")
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file; {_EXPECTED}")
    with open(path, "rb") as handle:
        head = handle.read(1024)
    if not head:
        raise CheckpointFileError(f"{path} is empty (0 bytes); {_EXPECTED}")
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise CheckpointFileError(
                f"{path} is a truncated or damaged zip archive (cut short while copying or writing?); {_EXPECTED}"
            )
        return "zip"
    if head.startswith(_LEGACY_MAGIC):
        return "legacy"
    raise CheckpointFileError(f"{path} is not a torch checkpoint ({_describe(head)}); {_EXPECTED}")


def _describe(head: bytes) -> str:
    """What the first bytes of a file that is not a torch checkpoint look like."""
    if head.startswith(b"\x80") and len(head) > 1 and 2 <= head[1] <= 5:
        return "a plain pickle, not a torch.save file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary data"
    if all(c.isprintable() or c in "\t\r\n" for c in text):
        return "it is a text file"
    return "unrecognised binary data"


def _unsafe_globals(path: Path, kind: str, err: Exception) -> list[str]:
    """The Python objects (``module.name``) that kept the safe loader from reading ``path``; empty when the
    loader stopped for another reason (a damaged file)."""
    if kind == "zip":
        try:
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # noqa: BLE001 - the pickle inside the archive is unreadable: damaged, not untrusted
            return []
    # torch has no scanner for the legacy format; its error names the first object it refused. In a file cut
    # short that name may itself be cut short, so only a name that exists counts as an object.
    return [name for name in re.findall(r"GLOBAL ([\w.]+)", str(err))[:1] if _resolves(name)]


def _resolves(dotted: str) -> bool:
    """Whether ``module.attribute`` may name an object, decided without importing anything the file names."""
    module, _, attribute = dotted.rpartition(".")
    if module in sys.modules:
        return hasattr(sys.modules[module], attribute)
    return bool(module) and importlib.util.find_spec(module.partition(".")[0]) is not None


def _reason(err: Exception) -> str:
    """The line of a torch.load error that says what went wrong (not torch's advice to load unsafely)."""
    text = str(err)
    match = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    if match:
        return match.group(1).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
