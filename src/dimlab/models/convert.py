"""Moved: the renaming is :mod:`dimlab.models.official`, the file format and loading :mod:`dimlab.models.checkpoint`,
the command ``dimlab convert-official`` :mod:`dimlab.commands.convert_official`. These names stay importable
from here for one release."""

from dimlab.models.checkpoint import (
    LoadReport,
    backbone_checkpoint,
    load_backbone,
    load_weights_adapting,
    read_backbone_file,
)
from dimlab.models.official import (
    convert_official_state_dict,
    dimlab_to_official,
    infer_official_config,
    official_to_dimlab,
    strip_prefix,
)
from dimlab.models.presets import DIM_CLASS_PATH

__all__ = [
    "DIM_CLASS_PATH",
    "LoadReport",
    "backbone_checkpoint",
    "convert_official_state_dict",
    "dimlab_to_official",
    "infer_official_config",
    "load_backbone",
    "load_weights_adapting",
    "official_to_dimlab",
    "read_backbone_file",
    "strip_prefix",
]
