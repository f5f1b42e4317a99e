"""Moved to :func:`dimlab.data.transforms.to_uint8` (the pixel conventions live together); importable here for
one release."""

from dimlab.data.transforms import to_uint8

__all__ = ["to_uint8"]
