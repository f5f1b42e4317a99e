"""The backbones' small layers against the library classes they stand in for."""

import pytest
import torch

from dimlab.models.layers import TimestepMLP


def test_timestep_mlp_matches_diffusers_timestep_embedding():
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    torch.manual_seed(0)
    ours = TimestepMLP(256, 48)
    torch.manual_seed(0)
    theirs = embeddings.TimestepEmbedding(256, 48)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for name, value in theirs.state_dict().items():  # same creation order and init under one seed
        torch.testing.assert_close(ours.state_dict()[name], value, rtol=0, atol=0)
    x = torch.randn(5, 256)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_backbones_import_without_diffusers():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['diffusers'] = None\n"
        "from dimlab.models.presets import build_backbone\n"
        "import dimlab.models.dim, dimlab.models.uvit\n"
        "assert 'diffusers' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
