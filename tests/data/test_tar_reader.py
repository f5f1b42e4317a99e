"""The fast ustar reader gives webdataset's samples, falls back for other tar flavours, reports damage."""

from __future__ import annotations

import io
import tarfile

import pytest
import webdataset as wds

from dimlab.data.tar_reader import iter_members, tar_samples


def _reference(path):
    return list(wds.tarfile_to_samples()(iter([{"url": str(path)}])))


def _fast(path, errors=None):
    def handler(exn):
        errors.append(exn)
        return True

    return list(
        tar_samples(handler if errors is not None else wds.reraise_exception)(iter([{"url": str(path)}]))
    )


def _write_tar(path, members, tar_format=tarfile.USTAR_FORMAT):
    with tarfile.open(path, "w", format=tar_format) as archive:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))


def test_same_samples_as_webdataset_on_written_shards(digits_dir):
    shard = digits_dir / "train-000000.tar"
    assert _fast(shard) == _reference(shard)
    assert len(_fast(shard)) == 40


def test_prefix_names_and_directories(tmp_path):
    path = tmp_path / "nested.tar"
    deep = "d" * 90 + "/" + "e" * 20 + "/sample_1"  # needs the ustar prefix field
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        folder = tarfile.TarInfo("dir")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for name, payload in ((f"{deep}.cls", b"3"), (f"{deep}.png", b"image"), ("x/sample_2.cls", b"4")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    assert _fast(path) == _reference(path)
    assert _fast(path)[0]["__key__"] == deep


def test_pax_and_gnu_long_names_fall_back_to_tarfile(tmp_path):
    long_key = "k" * 150
    for tar_format in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        path = tmp_path / f"long-{tar_format}.tar"
        members = [("a.cls", b"1"), ("a.png", b"x"), (f"{long_key}.cls", b"2"), ("b.cls", b"5")]
        _write_tar(path, members, tar_format)
        assert _fast(path) == _reference(path)
        assert [s["__key__"] for s in _fast(path)] == ["a", long_key, "b"]


def test_damaged_shards_go_to_the_handler(tmp_path):
    path = tmp_path / "good.tar"
    _write_tar(path, [(f"s{i}.cls", str(i).encode()) for i in range(6)])
    data = bytearray(path.read_bytes())
    corrupt = tmp_path / "checksum.tar"
    data[2 * 1024 + 5] ^= 0xFF  # a byte in the third header's name
    corrupt.write_bytes(bytes(data))
    errors = []
    assert [s["__key__"] for s in _fast(corrupt, errors)] == ["s0"]  # s1 may be incomplete, so it is dropped
    assert "checksum" in str(errors[0]) and "checksum.tar" in " ".join(map(str, errors[0].args))

    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(path.read_bytes()[: 3 * 1024 + 100])
    errors = []
    assert len(_fast(truncated, errors)) == 2 and len(errors) == 1
    with pytest.raises(tarfile.ReadError):
        list(iter_members(str(truncated)))
    (tmp_path / "empty.tar").write_bytes(b"")
    errors = []
    assert _fast(tmp_path / "empty.tar", errors) == [] and len(errors) == 1
