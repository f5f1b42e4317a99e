"""Plain ``nn.Module`` backbones and their building blocks (no Lightning); files are read and written only by
:mod:`.checkpoint` (the backbone file format) and renamed by :mod:`.official`."""
