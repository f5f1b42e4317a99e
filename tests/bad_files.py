"""Files that are not good checkpoints, shared by the tests of reading them (library and commands).

:func:`crafted_checkpoint` runs code when unpickled (it creates a marker file); :func:`broken_checkpoints` are the
kinds of broken file users meet: empty, cut short, random bytes, text, a legacy-format file cut short.
"""

from __future__ import annotations

from pathlib import Path

import torch


class MarkerOnLoad:
    """Unpickling this creates the file ``path``: stands for any code a crafted checkpoint could run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def crafted_checkpoint(folder: Path, legacy: bool = False) -> tuple[Path, Path]:
    """(a dimlab-looking checkpoint that runs code when unpickled, the marker file that code would create)."""
    marker = folder / "code-ran"
    path = folder / ("crafted-legacy.pt" if legacy else "crafted.ckpt")
    content = {
        "dimlab_backbone": {"class_path": "x", "init_args": {}},
        "backbone": {},
        "hook": MarkerOnLoad(marker),
    }
    torch.save(content, path, _use_new_zipfile_serialization=not legacy)
    return path, marker


#: kind of broken file -> a regex its error message must match.
BROKEN_MESSAGES = {
    "empty": r"empty \(0 bytes\)",
    "truncated": r"truncated or damaged zip archive",
    "random": r"not a torch checkpoint \(unrecognised binary data\)",
    "text": r"not a torch checkpoint \(it is a text file\)",
    "legacy-truncated": r"damaged or truncated|truncated \(it ends early\)",
}


def broken_checkpoints(folder: Path) -> dict[str, Path]:
    """One file of each kind in :data:`BROKEN_MESSAGES`, written under ``folder``."""
    good, legacy = folder / "good.pt", folder / "legacy.pt"
    torch.save({"w": torch.zeros(1000)}, good)
    torch.save({"w": torch.zeros(1000)}, legacy, _use_new_zipfile_serialization=False)
    data = good.read_bytes()
    contents = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "random": bytes(range(256)) * 20,
        "text": b"model:\n  lr: 1e-3\n",
        "legacy-truncated": legacy.read_bytes()[:300],
    }
    out = {}
    for kind, content in contents.items():
        out[kind] = folder / f"{kind}.ckpt"
        out[kind].write_bytes(content)
    return out
