"""Evaluation: FID features, reference statistics, distributed generation and the per-sample seed rule."""
