"""Moved to :mod:`dimlab.sampling.sampler` (inference has no Lightning code); importable here for one release."""

from dimlab.sampling.sampler import Sampler, load_sampler, per_sample_noise, upsample_factor

__all__ = ["Sampler", "load_sampler", "per_sample_noise", "upsample_factor"]
