"""The in-training FID callback on a tiny U-ViT, with a randomly initialised Inception (no download)."""

from __future__ import annotations

import csv
import math
import tempfile

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from dimlab.data.transforms import to_uint8
from dimlab.eval.fid import frechet_distance, stats_from_metric
from dimlab.eval.ref_stats import ReferenceStats
from dimlab.eval.split import official_labels, sample_seeds
from dimlab.lit.fid_callback import FIDCallback, fid_metric_key
from dimlab.lit.module import DiffusionModule
from tiny_models import tiny_trainer, tiny_uvit

pytest.importorskip("torch_fidelity")

FEATURES = 64  # torch-fidelity's cheapest Inception cut: fast on CPU, same code path as 2048


class _Blobs(Dataset):
    """Grey 8x8 images in [-1, 1] whose brightness encodes one of 10 classes."""

    def __init__(self, n: int = 16):
        g = torch.Generator().manual_seed(0)
        self.y = torch.arange(n) % 10
        base = (self.y.float() / 9 * 1.6 - 0.8).view(n, 1, 1, 1)
        self.x = (base + 0.2 * torch.randn(n, 1, 8, 8, generator=g)).clamp(-1, 1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def _loader():
    return DataLoader(_Blobs(), batch_size=4, shuffle=False)


def _module() -> DiffusionModule:
    torch.manual_seed(0)
    backbone = tiny_uvit(num_classes=10)
    return DiffusionModule(backbone, schedule="vp_sde", warmup_steps=0, ema_decay=0.5)


def _random_inception_state() -> dict[str, torch.Tensor]:
    """torch-fidelity's InceptionV3 state dict with He-normal random weights (the real file is a download)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return super().load_state_dict(state_dict, strict, assign) if state_dict else None

    with tempfile.NamedTemporaryFile(suffix=".pth") as fh:
        torch.save({}, fh.name)  # the constructor always loads a file; an empty one keeps it offline
        model = _Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=fh.name)
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("weight") and tensor.dim() == 4:
            state[name] = torch.randn(tensor.shape, generator=g) * math.sqrt(2.0 / tensor[0].numel())
        elif name.endswith("weight") and tensor.dim() == 2:
            state[name] = torch.randn(tensor.shape, generator=g) / math.sqrt(tensor.shape[1])
        else:
            state[name] = tensor.clone()
    return state


@pytest.fixture(scope="module")
def fid_assets(tmp_path_factory):
    """(weights file, reference stats .npz of the training images under the same extractor)."""
    from dimlab.eval.inception import build_fid_metric

    root = tmp_path_factory.mktemp("fid")
    weights = root / "random-inception.pth"
    torch.save(_random_inception_state(), weights)
    metric = build_fid_metric(weights, feature=FEATURES)
    real = to_uint8(_Blobs(n=32).x).expand(-1, 3, -1, -1)
    metric.update(real, real=False)
    stats = stats_from_metric(metric, real=False)
    ref_path = ReferenceStats(stats.mu, stats.sigma, count=stats.count, resolution=8).save(root / "ref.npz")
    return weights, ref_path


def test_metric_key_names_count_sampler_steps_and_cfg():
    assert fid_metric_key(10_000, "dpm++", 50, 0.4) == "fid/10k_dpmpp50_cfg0.4"
    assert fid_metric_key(50_000, "dpm", 25, 0.0) == "fid/50k_dpm25_cfg0"
    assert fid_metric_key(1_500, "euler_maruyama", 1000, 1.5) == "fid/1500_euler_maruyama1000_cfg1.5"


_GPU = pytest.mark.gpu
_NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[_GPU, _NEEDS_CUDA])])
def test_fid_is_logged_every_k_steps_and_matches_an_independent_computation(fid_assets, tmp_path, device):
    weights, ref_path = fid_assets
    # 6 samples in batches of 4: the last batch is partial.
    callback = FIDCallback(
        every_n_steps=2,
        num_samples=6,
        ref_stats=ref_path,
        steps=3,
        cfg_scale=0.4,
        batch_size=4,
        inception_weights=weights,
        seed=3,
    )
    module = _module()
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer = tiny_trainer(tmp_path, callbacks=[callback], logger=logger, accelerator=device)
    trainer.fit(module, train_dataloaders=_loader())

    key = "fid/6_dpmpp3_cfg0.4"
    assert callback.key == key
    assert [step for step, _ in callback.history] == [2, 4]
    fid_at_4 = callback.history[-1][1]
    assert math.isfinite(fid_at_4) and fid_at_4 > 0
    assert float(trainer.callback_metrics[key]) == pytest.approx(fid_at_4)

    logger.save()
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as fh:
        rows = [row for row in csv.DictReader(fh) if row.get(key)]
    assert [int(row["step"]) for row in rows] == [2, 4]
    assert float(rows[-1][key]) == pytest.approx(fid_at_4)
    assert float(rows[-1]["perf/fid_seconds_6_dpmpp3_cfg0.4"]) > 0

    # Recompute from the trained EMA weights with the low-level pieces: same seeds, labels, rounding, features.
    from dimlab.eval.inception import build_fid_metric
    from dimlab.eval.ref_stats import load_reference_stats

    module.to(device)
    labels = official_labels(6, 10, seed=3)
    images = module.sampler(use_ema=True).sample(
        labels, sample_seeds(3, range(6)), cfg_scale=0.4, sampler="dpm++", steps=3
    )
    metric = build_fid_metric(weights, feature=FEATURES, device=device)
    metric.update(to_uint8(images).expand(-1, 3, -1, -1), real=False)
    stats = stats_from_metric(metric, real=False)
    ref = load_reference_stats(ref_path)
    # Same device, same kernels; on GPU cuDNN may pick different convolution algorithms between the two runs.
    tolerance = 1e-6 if device == "cpu" else 1e-3
    assert frechet_distance(stats.mu, stats.sigma, ref.mu, ref.sigma) == pytest.approx(
        fid_at_4, rel=tolerance
    )


def test_missing_inception_weights_fail_before_the_first_step(fid_assets, tmp_path, monkeypatch):
    from dimlab.eval.inception import WEIGHTS_FILENAME, InceptionWeightsNotFoundError

    _, ref_path = fid_assets
    missing = tmp_path / "no-such-weights.pth"
    module = _module()
    trainer = tiny_trainer(tmp_path, callbacks=[FIDCallback(2, 6, ref_path, inception_weights=missing)])
    with pytest.raises(InceptionWeightsNotFoundError, match=WEIGHTS_FILENAME) as err:
        trainer.fit(module, train_dataloaders=_loader())
    assert str(missing) in str(err.value)
    assert trainer.global_step == 0

    # Default location (torch hub cache) empty: the message says where it looked.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    trainer = tiny_trainer(tmp_path, callbacks=[FIDCallback(2, 6, ref_path)])
    with pytest.raises(InceptionWeightsNotFoundError, match="torch_home"):
        trainer.fit(_module(), train_dataloaders=_loader())
    assert trainer.global_step == 0


def test_bad_reference_stats_fail_at_setup(fid_assets, tmp_path):
    weights, _ = fid_assets
    with pytest.raises(FileNotFoundError, match="reference statistics file not found"):
        tiny_trainer(
            tmp_path, callbacks=[FIDCallback(2, 6, tmp_path / "absent.npz", inception_weights=weights)]
        ).fit(_module(), train_dataloaders=_loader())
    odd = ReferenceStats(mu=torch.zeros(100).numpy(), sigma=torch.eye(100).numpy()).save(tmp_path / "odd.npz")
    trainer = tiny_trainer(tmp_path, callbacks=[FIDCallback(2, 6, odd, inception_weights=weights)])
    with pytest.raises(ValueError, match="100-d reference features"):
        trainer.fit(_module(), train_dataloaders=_loader())
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"num_samples": 1}, "num_samples"),
        ({"sampler": "heun"}, "sampler"),
        ({"steps": 0}, "steps"),
        ({"sampler": "dpm++", "steps": 2}, "order 3 needs steps >= 3"),
        ({"cfg_scale": -1.0}, "cfg_scale"),
        ({"label_mode": "class_frequency"}, "class_counts"),
    ],
)
def test_bad_arguments_are_rejected_at_construction(kwargs, message):
    args = {"every_n_steps": 2, "num_samples": 6, "ref_stats": "ref.npz"} | kwargs
    with pytest.raises(ValueError, match=message):
        FIDCallback(**args)


def _logged_fid(csv_path, key: str) -> dict[int, float]:
    with open(csv_path) as fh:
        return {int(row["step"]): float(row[key]) for row in csv.DictReader(fh) if row.get(key)}


@pytest.mark.slow
@pytest.mark.parametrize(
    "accelerator",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                _GPU,
                pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices"),
            ],
        ),
    ],
)
def test_two_ranks_give_the_single_process_fid(fid_assets, tmp_path, accelerator):
    """Each rank samples its own slice and the features are gathered once (gloo on CPU, NCCL on GPU): the FID
    over 7 images is the same with 1 or 2 processes (lr 0 keeps the weights identical across the two runs)."""
    weights, ref_path = fid_assets
    results = {}
    for devices, strategy in ((1, "auto"), (2, "ddp_spawn")):
        module = _module()
        module.hparams.lr = 0.0
        callback = FIDCallback(2, 7, ref_path, steps=3, batch_size=2, inception_weights=weights, seed=1)
        logger = CSVLogger(tmp_path, name=f"ranks{devices}", version=0)
        trainer = tiny_trainer(
            tmp_path,
            max_steps=2,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            callbacks=[callback],
            logger=logger,
        )
        trainer.fit(module, train_dataloaders=_loader())
        results[devices] = _logged_fid(
            tmp_path / f"ranks{devices}" / "version_0" / "metrics.csv", callback.key
        )
    assert list(results[1]) == list(results[2]) == [2]
    assert results[2][2] == pytest.approx(results[1][2], rel=1e-5 if accelerator == "cpu" else 1e-3)
