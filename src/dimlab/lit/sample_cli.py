"""Moved: ``dimlab sample`` is :mod:`dimlab.commands.sample`, the image helpers :mod:`dimlab.sampling.images`.
The helpers stay importable here for one release."""

from dimlab.sampling.images import save_grid, to_uint8_hwc

__all__ = ["save_grid", "to_uint8_hwc"]
