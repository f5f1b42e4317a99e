"""Noise schedules, the training objective, samplers, guidance and model-function wrappers (no Lightning, no
argparse)."""
