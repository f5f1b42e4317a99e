"""Reading checkpoint files safely: no arbitrary unpickling without an explicit opt-in, real dimlab / Lightning
checkpoints load without it, and files that are not checkpoints get an error that says what they are."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from bad_files import BROKEN_MESSAGES, broken_checkpoints, crafted_checkpoint
from dimlab.errors import CheckpointFileError, MissingFileError, UntrustedCheckpointError
from dimlab.models.checkpoint import load_backbone, read_checkpoint
from dimlab.sampling.sampler import load_sampler
from tiny_models import train_tiny_checkpoint


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_crafted_pickle_is_refused_without_running(tmp_path, legacy):
    path, marker = crafted_checkpoint(tmp_path, legacy)
    with pytest.raises(UntrustedCheckpointError, match=r"\(io\.open\).*--trust-checkpoint \(trusted=True"):
        read_checkpoint(path)
    with pytest.raises(UntrustedCheckpointError):
        load_backbone(path)
    with pytest.raises(UntrustedCheckpointError):
        load_sampler(path)
    assert not marker.exists(), "the crafted checkpoint ran code"


def test_trusted_is_the_explicit_opt_in(tmp_path):
    path, marker = crafted_checkpoint(tmp_path)
    read_checkpoint(path, trusted=True)
    assert marker.exists()


def test_dimlab_training_checkpoints_load_safely_without_warnings(tmp_path):
    """A checkpoint holds a pathlib.Path when the module was built from Python with one (init_from=Path(...))."""
    plain = train_tiny_checkpoint(tmp_path / "run" / "last.ckpt")
    saved = torch.load(plain, weights_only=False)
    saved["hyper_parameters"]["init_from"] = Path("/runs/base/last.ckpt")  # as save_hyperparameters stores it
    with_path = tmp_path / "with_path.ckpt"
    torch.save(saved, with_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_checkpoint(with_path)["hyper_parameters"]["init_from"] == Path("/runs/base/last.ckpt")
        sampler = load_sampler(with_path)
    assert sampler.num_classes == 4


@pytest.mark.parametrize("kind", list(BROKEN_MESSAGES))
def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path, kind):
    path = broken_checkpoints(tmp_path)[kind]
    with pytest.raises(CheckpointFileError, match=BROKEN_MESSAGES[kind]) as info:
        read_checkpoint(path)
    assert not isinstance(info.value, UntrustedCheckpointError), "a broken file is not an untrusted one"
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointFileError, match=BROKEN_MESSAGES[kind]):
        read_checkpoint(path, trusted=True)  # trusting a broken file does not make it loadable


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(MissingFileError, match="no such file"):
        read_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError):  # still the built-in type callers catch
        load_backbone(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointFileError, match="is a folder"):
        read_checkpoint(tmp_path)
