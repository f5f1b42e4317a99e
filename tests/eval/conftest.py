"""Fixtures for the FID tests: a randomly initialised torch-fidelity InceptionV3 weights file, written locally.

The real FID weights are a 92 MB download; tests never touch the network. torch-fidelity's constructor always
loads a state dict (downloading when given no path), so the architecture is built by a subclass that skips
loading an empty dict; its parameters are then refilled with He-normal random tensors so activations neither
vanish nor explode through the 40-odd layers, and the state dict is saved in the format the real file uses.
"""

from __future__ import annotations

import math
import tempfile

import numpy as np
import pytest
import torch

pytest.importorskip("torch_fidelity")


def _random_inception_state_dict(seed: int) -> dict[str, torch.Tensor]:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            if state_dict:
                return super().load_state_dict(state_dict, strict=strict, assign=assign)
            return None  # keep the fresh architecture; the caller fills in random weights

    with tempfile.NamedTemporaryFile(suffix=".pth") as fh:
        torch.save(
            {}, fh.name
        )  # an empty state dict: the constructor "loads" it without touching the network
        model = _Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=fh.name)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("weight") and tensor.dim() == 4:
            fan_in = tensor[0].numel()
            value = torch.randn(tensor.shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif name.endswith("weight") and tensor.dim() == 2:
            value = torch.randn(tensor.shape, generator=g) / math.sqrt(tensor.shape[1])
        else:
            value = tensor.clone()  # BatchNorm affine/running stats and counters keep their defaults
        state[name] = value
    return state


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory):
    """Path of a weights file with the real file's keys and shapes but random values."""
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(_random_inception_state_dict(seed=0), path)
    return path


@pytest.fixture(scope="session")
def small_images() -> torch.Tensor:
    """Eight structured 32x32 uint8 RGB images (smooth gradients + noise), varied enough for features to differ."""
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    images = []
    for i in range(8):
        phase = i / 8
        base = torch.stack(
            [torch.sin(6.28 * (xx + phase)), torch.cos(6.28 * (yy * (1 + i % 3))), xx * yy * (i % 4)]
        )
        noisy = base * 0.5 + 0.5 + 0.1 * torch.randn(base.shape, generator=g)
        images.append((noisy.clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.stack(images)


@pytest.fixture
def numpy_rng() -> np.random.Generator:
    """A seeded NumPy generator for random feature sets."""
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def inception64(random_inception_weights):
    """A FrechetInceptionDistance over the random-weight InceptionV3, cut at the 64-d block (fast on CPU).

    Shared across tests: every dimlab scoring function resets the metric before use.
    """
    from dimlab.eval.inception import build_fid_metric

    return build_fid_metric(random_inception_weights, feature=64)


class PassThroughFeatures(torch.nn.Module):
    """A feature extractor whose features are the flattened uint8 pixels (for tests of the bookkeeping)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1).double()


@pytest.fixture
def pixel_metric_factory():
    """Build a torchmetrics FID whose 'features' are raw pixels of (3, s, s) images."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    def build(side: int = 4):
        return FrechetInceptionDistance(feature=PassThroughFeatures(3 * side * side))

    return build
