"""The LightningModule and its callbacks (EMA, FID, sample grids, config saving)."""
