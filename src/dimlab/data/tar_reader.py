"""Fast reading of local tar shards into webdataset samples, with webdataset's own reader as the fallback.

Python's ``tarfile`` (which webdataset uses) decodes every 512-byte header field by field through several
layers; for small members such as latent moments that costs more than everything else the loader does
per sample. Shards written by ``dimlab shards`` are plain ustar files: regular members with short names.
This reader memory-maps such a file and slices names, sizes and payloads straight out of the headers
(checksums verified). Anything else (PAX / GNU long-name headers, links, remote URLs) goes through
``webdataset.tarfile_to_samples`` unchanged, so the result is the same samples either way.
"""

from __future__ import annotations

import mmap
import re
import tarfile
from collections.abc import Callable, Iterator
from typing import Any

import webdataset as wds

BLOCK = 512
_KEY_EXTENSION = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's key / extension split


class UnsupportedTarEntry(Exception):
    """A header this reader leaves to ``tarfile`` (PAX, GNU long names, links, base-256 sizes)."""


def _octal(field: bytes, what: str, offset: int) -> int:
    if field[:1] and field[0] & 0x80:
        raise UnsupportedTarEntry(f"base-256 {what} at byte {offset}")
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError as exc:
        raise tarfile.ReadError(f"invalid {what} {field!r} in header at byte {offset}") from exc


def iter_members(path: str) -> Iterator[tuple[str, bytes]]:
    """(name, payload) of each regular member of the ustar file ``path``, in file order."""
    with open(path, "rb") as handle:
        if handle.seek(0, 2) == 0:
            raise tarfile.ReadError("empty file")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            offset, end = 0, len(data)
            while offset + BLOCK <= end:
                header = data[offset : offset + BLOCK]
                if not any(header):
                    return  # end-of-archive marker
                stored_checksum = _octal(header[148:156], "checksum", offset)
                if sum(header[:148]) + sum(header[156:]) + 8 * 32 != stored_checksum:
                    raise tarfile.ReadError(f"bad header checksum at byte {offset}")
                size = _octal(header[124:136], "size", offset)
                kind = header[156:157]
                start = offset + BLOCK
                if start + size > end:
                    raise tarfile.ReadError(f"member at byte {offset} is truncated ({size} bytes announced)")
                if kind in (b"0", b"\0"):
                    name = header[:100].split(b"\0", 1)[0]
                    prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
                    full = (prefix + b"/" + name) if prefix else name
                    yield full.decode("utf-8"), data[start : start + size]
                elif kind != b"5":  # directories carry nothing; everything else is left to tarfile
                    raise UnsupportedTarEntry(f"tar entry type {kind!r} at byte {offset}")
                offset = start + (size + BLOCK - 1) // BLOCK * BLOCK
            if offset < end:
                raise tarfile.ReadError(f"file ends inside a header at byte {offset}")


def _group(url: str, members: Iterator[tuple[str, bytes]]) -> Iterator[dict[str, Any]]:
    """Consecutive members with the same key form one sample (webdataset's grouping rule)."""
    sample: dict[str, Any] | None = None
    for name, payload in members:
        match = _KEY_EXTENSION.match(name)
        if match is None:
            continue  # no extension: not part of any sample (webdataset skips these too)
        key, extension = match.groups()
        if sample is None or sample["__key__"] != key:
            if sample is not None:
                yield sample
            sample = {"__key__": key, "__url__": url}
        sample[extension.lower()] = payload
    if sample is not None:
        yield sample


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def tar_samples(handler: Callable[[BaseException], bool]):
    """Pipeline stage: ``{"url": ...}`` items -> samples; errors go to ``handler`` (True: next shard)."""

    def stage(sources: Iterator[dict[str, str]]) -> Iterator[dict[str, Any]]:
        for source in sources:
            url = source["url"]
            if not _is_local(url):
                yield from wds.tarfile_to_samples(handler=handler)(iter([source]))
                continue
            yielded = 0
            try:
                for sample in _group(url, iter_members(url)):
                    yield sample
                    yielded += 1
            except UnsupportedTarEntry:
                fallback = wds.tarfile_to_samples(handler=handler)(iter([source]))
                for index, sample in enumerate(fallback):
                    if index >= yielded:
                        yield sample
            except (OSError, tarfile.TarError, UnicodeDecodeError) as exn:
                exn.args = (*exn.args, f"shard {url}", f"after {yielded} samples")
                if not handler(exn):
                    raise

    return stage
