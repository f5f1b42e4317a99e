"""The FID feature extractor: torchmetrics' ``FrechetInceptionDistance`` over torch-fidelity's InceptionV3.

The weights are the 2015-12-05 TensorFlow FID Inception graph as converted by torch-fidelity
(``weights-inception-2015-12-05-6726825d.pth``), the same source graph pytorch-fid and the ADM evaluator use.
They are read from a local file only: an explicit path, or torch hub's cache
(``$TORCH_HOME/hub/checkpoints/``, ``TORCH_HOME`` defaulting to ``~/.cache/torch``). Nothing here falls back to
other Inception weights (torchvision's ImageNet InceptionV3 gives FIDs that are not comparable) and nothing
downloads unless asked to (``download=True``).

torch-fidelity (the ``fid`` extra) is only needed when a metric is built (:func:`build_fid_metric` says so when it
is missing), so ``import dimlab.eval`` works without it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torchmetrics.image.fid import FrechetInceptionDistance

__all__ = [
    "FEATURE_DIMS",
    "WEIGHTS_FILENAME",
    "WEIGHTS_URL",
    "InceptionWeightsNotFoundError",
    "build_fid_metric",
    "default_weights_path",
    "is_official_weights",
    "resolve_inception_weights",
    "weights_sha256",
]

WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + WEIGHTS_FILENAME
# torch.hub convention: the hex part of the file name is the start of the file's SHA-256.
OFFICIAL_SHA256_PREFIX = "6726825d"
#: The feature sizes torch-fidelity's InceptionV3 can be cut at (2048, the pool features, is the FID standard).
FEATURE_DIMS = (64, 192, 768, 2048)


class InceptionWeightsNotFoundError(FileNotFoundError):
    """The FID Inception weights file is not on this machine (raised before any sampling starts)."""


def default_weights_path() -> Path:
    """Where torch hub (and torch-fidelity's own download) keeps the weights: ``<hub dir>/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME


def _missing_message(looked_at: list[Path]) -> str:
    places = "\n".join(f"  - {p}" for p in looked_at)
    return (
        f"FID Inception weights not found. Looked at:\n{places}\n"
        f"Needed: {WEIGHTS_FILENAME} (torch-fidelity's port of the 2015-12-05 TF FID Inception).\n"
        f"Put it at {default_weights_path()} (torch hub cache; TORCH_HOME moves it) or pass it explicitly "
        "(--inception-weights FILE / inception_weights=FILE).\n"
        f"On a machine with internet: curl -L -o {WEIGHTS_FILENAME} {WEIGHTS_URL}\n"
        "Other Inception weights (torchvision, pytorch-fid's pt_inception file) are not accepted: "
        "their FIDs are not comparable with this pipeline."
    )


def resolve_inception_weights(path: str | Path | None = None, download: bool = False) -> Path:
    """Return the local weights file to use, or raise :class:`InceptionWeightsNotFoundError` saying how to get it.

    ``path`` given: that file must exist. Otherwise the torch hub cache location is used; when it is missing and
    ``download`` is true it is fetched there from torch-fidelity's GitHub release (hash-checked by torch hub).
    """
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise InceptionWeightsNotFoundError(_missing_message([explicit]))
        return explicit
    cached = default_weights_path()
    if cached.is_file():
        return cached
    if download:
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(WEIGHTS_URL, str(cached), hash_prefix=OFFICIAL_SHA256_PREFIX)
        except Exception as err:  # network errors come in many types; the message is what matters here
            raise InceptionWeightsNotFoundError(
                _missing_message([cached]) + f"\nDownload from {WEIGHTS_URL} failed: {err}"
            ) from err
        return cached
    raise InceptionWeightsNotFoundError(_missing_message([cached]))


def weights_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a weights file (recorded in FID reports so numbers can be traced to exact weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_official_weights(sha256: str) -> bool:
    """Whether a SHA-256 matches the published torch-fidelity FID Inception file (by torch hub's prefix rule)."""
    return sha256.startswith(OFFICIAL_SHA256_PREFIX)


def _require_torch_fidelity() -> None:
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "FID needs torch-fidelity (its InceptionV3 is the feature extractor): "
            "pip install 'dimlab[fid]' or pip install torch-fidelity"
        ) from err


def build_fid_metric(
    weights_path: str | Path,
    feature: int = 2048,
    antialias: bool = False,
    device: str | torch.device = "cpu",
):
    """A fresh ``torchmetrics.image.fid.FrechetInceptionDistance`` whose InceptionV3 loads ``weights_path``.

    The file is routed through torchmetrics' ``feature_extractor_weights_path`` into torch-fidelity's
    ``FeatureExtractorInceptionV3``, which then never touches the network. ``antialias=False`` keeps
    torch-fidelity's TF1-compatible bilinear resize (what the FID Inception was used with); torchmetrics' own
    default (``True``) switches to torch's antialiased resize, which changes FID for images larger than 299 px.
    Images must be fed as uint8 (see :func:`dimlab.data.transforms.to_uint8`).
    """
    _require_torch_fidelity()

    weights = Path(weights_path)
    if not weights.is_file():
        raise InceptionWeightsNotFoundError(_missing_message([weights]))
    metric = FrechetInceptionDistance(
        feature=feature,
        reset_real_features=True,
        normalize=False,
        feature_extractor_weights_path=str(weights),
        antialias=antialias,
    )
    return metric.to(device)
