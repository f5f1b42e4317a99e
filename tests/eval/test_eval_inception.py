"""The Inception feature extractor: weights routed from a local file, clear errors when they are missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dimlab.eval.inception import (
    WEIGHTS_FILENAME,
    WEIGHTS_URL,
    InceptionWeightsNotFoundError,
    build_fid_metric,
    default_weights_path,
    is_official_weights,
    resolve_inception_weights,
    weights_sha256,
)


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """A TORCH_HOME without the weights, so the cache lookup fails on any machine."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_metric_loads_exactly_our_weights_file(random_inception_weights, inception64):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    stored = torch.load(random_inception_weights, map_location="cpu")
    net = inception64.inception
    assert isinstance(net, FeatureExtractorInceptionV3), "torch-fidelity's network"
    loaded = net.state_dict()
    assert set(loaded) == set(stored)
    for key in ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight", "fc.weight"):
        assert torch.equal(loaded[key], stored[key]), key
    assert not net.training and not net.use_antialias, "eval mode, torch-fidelity's TF1 resize"


def test_full_network_gives_2048_features(random_inception_weights, small_images):
    metric = build_fid_metric(random_inception_weights)  # the FID default: 2048-d pool features
    feats = metric.inception(small_images[:2])
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    assert not torch.allclose(feats[0], feats[1]), "different images give different features"


def test_explicit_missing_path_fails_with_instructions(tmp_path):
    missing = tmp_path / "nowhere" / WEIGHTS_FILENAME
    with pytest.raises(InceptionWeightsNotFoundError) as info:
        resolve_inception_weights(missing)
    text = str(info.value)
    assert str(missing) in text and WEIGHTS_FILENAME in text and WEIGHTS_URL in text
    assert "--inception-weights" in text


def test_torch_hub_cache_location(empty_torch_home, random_inception_weights):
    expected = empty_torch_home / "hub" / "checkpoints" / WEIGHTS_FILENAME
    assert default_weights_path() == expected
    with pytest.raises(InceptionWeightsNotFoundError, match="checkpoints"):
        resolve_inception_weights()
    expected.parent.mkdir(parents=True)
    expected.symlink_to(random_inception_weights)
    assert resolve_inception_weights() == expected


def test_missing_weights_fail_before_any_sampling(empty_torch_home):
    from dimlab.eval.ref_stats import ReferenceStats
    from dimlab.eval.score import generate_and_score

    calls = []

    def sample_fn(indices, labels, seeds):
        calls.append(indices)
        return torch.zeros(len(indices), 3, 8, 8)

    ref = ReferenceStats(np.zeros(2048), np.eye(2048))
    with pytest.raises(InceptionWeightsNotFoundError, match=WEIGHTS_FILENAME):
        generate_and_score(sample_fn, num_samples=4, batch_size=2, ref_stats=ref)
    assert calls == []


def test_cli_reports_missing_weights_before_loading_the_checkpoint(empty_torch_home, tmp_path, capsys):
    from dimlab.commands.fid import main

    ckpt = tmp_path / "garbage.ckpt"
    ckpt.write_bytes(b"not a checkpoint")  # loading it would fail differently
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(2048), sigma=np.eye(2048))
    code = main(["--ckpt", str(ckpt), "--num-samples", "4", "--ref", str(ref)])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing FID Inception weights" in err and WEIGHTS_URL in err


def test_sha256_and_official_check(random_inception_weights):
    digest = weights_sha256(random_inception_weights)
    assert len(digest) == 64 and digest == weights_sha256(random_inception_weights)
    assert not is_official_weights(digest), "random weights are not the FID weights"
    assert is_official_weights("6726825d" + "0" * 56)
