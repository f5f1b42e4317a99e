"""Bad files and arguments end a command with one line naming the file or argument, exit status 2 and no
traceback (``--debug`` / ``DIMLAB_DEBUG=1`` show it); crafted checkpoints are refused unless trusted."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from bad_files import BROKEN_MESSAGES, broken_checkpoints, crafted_checkpoint
from dimlab.commands.main import main

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def one_line_error(capsys, argv: list[str]) -> str:
    """The stderr of ``dimlab ARGV``, which must fail with status 2 and exactly one line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"dimlab {argv[0]}: error: "), err
    return err


@pytest.mark.parametrize("kind", list(BROKEN_MESSAGES))
def test_broken_checkpoint_files(tmp_path, capsys, kind):
    path = broken_checkpoints(tmp_path)[kind]
    for argv in (
        ["sample", "--ckpt", str(path), "--out", str(tmp_path / "out")],
        ["convert-official", str(path), str(tmp_path / "dst.pt")],
        ["convert-official", str(path), str(tmp_path / "dst.pt"), "--reverse"],
    ):
        err = one_line_error(capsys, argv)
        assert str(path) in err
        assert re.search(BROKEN_MESSAGES[kind], err), err


def test_convert_official_on_a_tensor_or_a_missing_file(tmp_path, capsys):
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    err = one_line_error(capsys, ["convert-official", str(tensor), str(tmp_path / "dst.pt")])
    assert f"{tensor} holds a Tensor" in err and "expected an official DiM state dict" in err
    missing = tmp_path / "nnet_ema.pth"
    err = one_line_error(capsys, ["convert-official", str(missing), str(tmp_path / "dst.pt")])
    assert f"{missing}: no such file" in err
    assert not (tmp_path / "dst.pt").exists()


@pytest.mark.parametrize("command", ["sample", "convert-official", "convert-official --reverse"])
def test_crafted_checkpoints_are_refused_unless_trusted(tmp_path, capsys, command):
    path, marker = crafted_checkpoint(tmp_path)
    name, *flags = command.split()
    argv = (
        [name, "--ckpt", str(path), "--out", str(tmp_path / "o")]
        if name == "sample"
        else [name, str(path), str(tmp_path / "d.pt"), *flags]
    )
    err = one_line_error(capsys, argv)
    assert "--trust-checkpoint" in err and not marker.exists()
    # the opt-in loads it (and the command then fails on the content, which is not a real model)
    main([*argv, "--trust-checkpoint"])
    capsys.readouterr()
    assert marker.exists()


def test_sample_arguments(tiny_ckpt, tmp_path, capsys):
    base = ["sample", "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "out")]
    assert "--num: expected a positive number of images, got 0" in one_line_error(
        capsys, [*base, "--num", "0"]
    )
    err = one_line_error(capsys, [*base, "--steps", "2"])
    assert "--steps 2" in err and "dpm++" in err and "at least 3" in err
    err = one_line_error(capsys, [*base, "--resolution", "15"])
    assert "--resolution 15x15" in err and "multiples of 2 (the patch size 2)" in err
    err = one_line_error(capsys, [*base, "--class-labels", "1", "99"])
    assert "--class-labels 99" in err and "0..3, or 4 for unconditional" in err
    assert not (tmp_path / "out").exists(), "nothing is written before the arguments are checked"


def test_the_process_exits_2_without_a_traceback_unless_debugging(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    argv = [sys.executable, "-m", "dimlab", "sample", "--ckpt", str(empty), "--out", str(tmp_path / "o")]
    done = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"dimlab sample: error: {empty} is empty (0 bytes); "
        "expected a checkpoint written by torch.save (.ckpt / .pt / .pth)"
    ]
    done = subprocess.run([*argv, "--debug"], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" in done.stderr and "CheckpointFileError" in done.stderr
    done = subprocess.run(argv, env={**ENV, "DIMLAB_DEBUG": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" in done.stderr
