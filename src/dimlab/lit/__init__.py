"""The LightningModule and its callbacks (EMA with its FSDP plumbing, FID, sample grids, faults, W&B config)."""
