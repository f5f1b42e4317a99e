"""WebDataset shard writers, the Lightning DataModule, transforms and the VAE wrapper."""
