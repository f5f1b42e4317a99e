"""Plain ``nn.Module`` backbones and their building blocks (no Lightning, no I/O)."""
