"""Evaluation: FID features, reference statistics and distributed generation."""
