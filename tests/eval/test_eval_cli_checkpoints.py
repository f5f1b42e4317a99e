"""``dimlab fid --ckpt`` and what it is given: crafted checkpoints are refused unless trusted."""

from __future__ import annotations

import numpy as np

from bad_files import crafted_checkpoint
from dimlab.commands.main import main


def _fid_argv(ckpt, ref, weights) -> list[str]:
    argv = ["fid", "--ckpt", str(ckpt), "--num-samples", "4", "--ref", str(ref), "--steps", "3"]
    argv += ["--batch-size", "2", "--feature-dim", "64", "--inception-weights", str(weights)]
    return [*argv, "--accelerator", "cpu", "--no-progress"]


def test_fid_refuses_a_crafted_checkpoint_unless_trusted(tmp_path, capsys, random_inception_weights):
    path, marker = crafted_checkpoint(tmp_path)
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(64), sigma=np.eye(64))
    assert main(_fid_argv(path, ref, random_inception_weights)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "--trust-checkpoint" in err
    assert not marker.exists()
    main([*_fid_argv(path, ref, random_inception_weights), "--trust-checkpoint"])  # then fails on the content
    assert marker.exists()
