"""ImageNet-style folders -> ADM-cropped JPEG/PNG shards, with a corrupt file reported and skipped."""

from __future__ import annotations

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from dimlab.commands.shards import main
from dimlab.data.manifest import read_manifest
from dimlab.data.transforms import adm_center_crop, decode_image


def _make_tree(root, rng):
    sizes = {"cat": [(300, 260), (400, 280)], "dog": [(260, 300), (520, 300), (280, 280)]}
    originals = {}
    for split in ("train", "val"):
        for name, class_sizes in sizes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, (width, height) in enumerate(class_sizes):
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                path = folder / f"{name}_{i}.png"
                Image.fromarray(pixels).save(path)
                originals[str(path.relative_to(root))] = pixels
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "train" / "dog" / "notes.txt").write_text("ignored: not an image")
    return originals


def test_imagefolder_shards_crop_label_and_skip_corrupt_files(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    originals = _make_tree(src, np.random.default_rng(0))
    code = main(
        [
            "imagefolder",
            str(src),
            str(out),
            "--resolution",
            "256",
            "--format",
            "png",
            "--shard-size",
            "2",
            "--workers",
            "2",
        ]
    )
    assert code == 0
    manifest = read_manifest(out)
    assert manifest["class_names"] == ["cat", "dog"] and manifest["num_classes"] == 2
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert train["samples"] == 5 and val["samples"] == 5
    assert train["per_class"] == {"0": 2, "1": 3}
    assert train["skipped"] == 1 and train["skipped_sources"][0]["source"].endswith("dog/broken.jpg")
    assert val["skipped"] == 0
    assert len(train["shards"]) == 3  # 6 files listed (one corrupt) -> 3 shards of 2 items

    # every sample is the exact ADM crop of one source image (PNG is lossless), labelled by its folder
    crops = {key: np.asarray(adm_center_crop(Image.fromarray(p), 256)) for key, p in originals.items()}
    seen = 0
    for shard in train["shards"] + val["shards"]:
        for sample in wds.DataPipeline(
            wds.SimpleShardList([str(out / shard["name"])]), wds.tarfile_to_samples()
        ):
            image = decode_image(sample["png"], 3)
            matches = [key for key, crop in crops.items() if np.array_equal(crop, image)]
            assert len(matches) == 1
            assert int(sample["cls"]) == (0 if "/cat/" in f"/{matches[0]}" else 1)
            seen += 1
    assert seen == 10


def test_imagefolder_class_map_and_jpeg(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _make_tree(src, np.random.default_rng(1))
    class_map = tmp_path / "classes.txt"
    class_map.write_text("dog 5\ncat 7\n")
    code = main(
        [
            "imagefolder",
            str(src / "val"),
            str(out),
            "--resolution",
            "256",
            "--class-map",
            str(class_map),
            "--split",
            "val",
            "--quality",
            "90",
            "--workers",
            "1",
        ]
    )
    assert code == 0
    manifest = read_manifest(out)
    assert manifest["num_classes"] == 8 and manifest["image_format"] == "jpeg"
    assert manifest["splits"]["val"]["per_class"] == {"5": 3, "7": 2}
    shard = out / manifest["splits"]["val"]["shards"][0]["name"]
    sample = next(iter(wds.DataPipeline(wds.SimpleShardList([str(shard)]), wds.tarfile_to_samples())))
    assert decode_image(sample["jpg"], 3).shape == (256, 256, 3)


def test_imagefolder_errors(tmp_path):
    assert main(["imagefolder", str(tmp_path / "missing"), str(tmp_path / "out"), "--resolution", "256"]) == 2
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    assert main(["imagefolder", str(tmp_path / "empty"), str(tmp_path / "out2"), "--resolution", "256"]) == 2


def _flat_tree(root, classes, per_class=2, size=(40, 30)):
    rng = np.random.default_rng(2)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.png")


def test_an_empty_class_folder_is_refused_not_given_an_id(tmp_path, capsys):
    """torchvision's ImageFolder raises too: the empty folder would take an id and shift every later class."""
    src = tmp_path / "src"
    _flat_tree(src, ["ant", "cat"])
    (src / "bee").mkdir()  # sorts between the two, so it would take id 1 and move cat to 2
    (src / "bee" / "readme.txt").write_text("not an image")
    argv = ["imagefolder", str(src), str(tmp_path / "out"), "--resolution", "32"]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "bee" in err and "no image files" in err and "--class-map" in err, err
    assert not (tmp_path / "out" / "manifest.json").exists()

    # with explicit ids nothing shifts: the empty folder is only reported
    class_map = tmp_path / "classes.txt"
    class_map.write_text("ant\nbee\ncat\n")
    assert main([*argv, "--class-map", str(class_map)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "bee" in err and "no image files" in err, err
    manifest = read_manifest(tmp_path / "out")
    assert manifest["splits"]["train"]["per_class"] == {"0": 2, "2": 2}


def test_broken_symlinks_are_reported_as_skipped(tmp_path, capsys):
    src = tmp_path / "src"
    _flat_tree(src, ["ant", "cat"])
    (src / "cat" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    assert main(["imagefolder", str(src), str(tmp_path / "out"), "--resolution", "32", "--workers", "1"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "cat/gone.jpg" in err and "broken symlink" in err, err
    train = read_manifest(tmp_path / "out")["splits"]["train"]
    assert train["samples"] == 4 and train["skipped"] == 1
    (skipped,) = train["skipped_sources"]
    assert skipped["source"].endswith("cat/gone.jpg") and "deleted.jpg" in skipped["reason"]


def test_pixel_shards_take_any_resolution(tmp_path):
    src = tmp_path / "src"
    _flat_tree(src, ["ant", "cat"], size=(50, 40))
    for resolution in (28, 100):
        out = tmp_path / f"out{resolution}"
        assert (
            main(["imagefolder", str(src), str(out), "--resolution", str(resolution), "--format", "png"]) == 0
        )
        manifest = read_manifest(out)
        assert manifest["resolution"] == resolution
        shard = out / manifest["splits"]["train"]["shards"][0]["name"]
        sample = next(iter(wds.DataPipeline(wds.SimpleShardList([str(shard)]), wds.tarfile_to_samples())))
        assert decode_image(sample["png"], 3).shape == (resolution, resolution, 3)
    with pytest.raises(SystemExit):
        main(["imagefolder", str(src), str(tmp_path / "bad"), "--resolution", "0"])
