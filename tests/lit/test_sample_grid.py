"""SampleGrid: which labels its rows get (the first classes, or the ones a recipe names) and the file it writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dimlab.lit.callbacks import SampleGrid
from dimlab.lit.module import DiffusionModule
from tiny_models import tiny_trainer, tiny_uvit


def _module(class_conditional: bool = True) -> DiffusionModule:
    return DiffusionModule(
        tiny_uvit(num_classes=4), schedule="vp_sde", warmup_steps=0, class_conditional=class_conditional
    )


def test_rows_are_the_named_classes_in_order():
    grid = SampleGrid(per_class=2, classes=[3, 1])
    assert grid.labels(_module()) == [3, 3, 1, 1]
    assert SampleGrid(per_class=2, max_classes=3).labels(_module()) == [0, 0, 1, 1, 2, 2]
    unconditional = _module(class_conditional=False)
    assert grid.labels(unconditional) == [unconditional.null_class] * 4


def test_a_class_outside_the_model_is_refused_before_training(tmp_path):
    grid = SampleGrid(every_n_steps=1, per_class=1, classes=[0, 4], steps=3)
    with pytest.raises(ValueError, match=r"SampleGrid.classes: 4 is outside \[0, 4\)"):
        grid.setup(tiny_trainer(tmp_path), _module(), "fit")


def test_the_grid_png_has_one_row_per_named_class(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = [{"x": torch.rand(1, 8, 8, generator=g) * 2 - 1, "y": torch.tensor(i % 4)} for i in range(8)]
    grid = SampleGrid(every_n_steps=2, per_class=3, classes=[2, 0], steps=3)
    trainer = tiny_trainer(tmp_path, max_steps=2, callbacks=[grid], default_root_dir=tmp_path)
    trainer.fit(_module(), torch.utils.data.DataLoader(data, batch_size=4))
    image = np.asarray(Image.open(tmp_path / "samples" / "step_0000002.png"))
    assert image.shape[1] > image.shape[0] >= 2 * 8, "2 rows (classes) of 3 columns of 8 px samples"
