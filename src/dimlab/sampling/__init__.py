"""Inference: what a checkpoint says about sampling (:mod:`.spec`), the one sampling path every tool shares
(:mod:`.sampler`) and the image writers (:mod:`.images`). No Lightning, no argparse."""
