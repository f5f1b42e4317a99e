"""Moved to :mod:`dimlab.models.layers`; this path keeps working for one release."""

from dimlab.models.layers import RMSNorm, modulate

__all__ = ["RMSNorm", "modulate"]
