"""Noise schedules, the training objective, samplers and guidance (no Lightning)."""
