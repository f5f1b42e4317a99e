"""What a trained model says about sampling: its noise schedule, the latent shape, its classes and its VAE.

The training module records a :class:`DiffusionSpec` in every checkpoint (the ``dimlab_diffusion`` entry) and
builds its own samplers from it; :func:`dimlab.sampling.sampler.load_sampler` reads it back. One record, written
and read in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dimlab.data.vae import SD_LATENT_SCALE, SD_VAE_FACTOR

__all__ = ["CHECKPOINT_KEY", "DiffusionSpec"]

#: The checkpoint entry that holds :meth:`DiffusionSpec.to_checkpoint`.
CHECKPOINT_KEY = "dimlab_diffusion"


@dataclass(frozen=True)
class DiffusionSpec:
    """The sampling side of a trained model.

    ``latent_shape`` is the (C, H, W) the backbone denoises. ``num_classes`` counts the real classes; the null
    (unconditional) id is ``num_classes``, and ``class_conditional=False`` always uses it. ``vae_path`` is the
    VAE folder of a latent-space model (None for pixel space); images are ``vae_factor`` times larger than the
    latents, which are ``latent_scale`` times the VAE's.
    """

    schedule: str
    latent_shape: tuple[int, int, int]
    num_classes: int
    class_conditional: bool = True
    vae_path: str | None = None
    latent_space: bool = False
    latent_scale: float = SD_LATENT_SCALE
    vae_factor: int = SD_VAE_FACTOR

    def __post_init__(self) -> None:
        object.__setattr__(self, "latent_shape", tuple(int(s) for s in self.latent_shape))

    @property
    def null_class(self) -> int:
        """The unconditional class id."""
        return self.num_classes

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the images: the latent grid times the VAE factor in latent space, else the latent grid."""
        scale = self.vae_factor if self.latent_space else 1
        return (self.latent_shape[1] * scale, self.latent_shape[2] * scale)

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint entry (plain types, so ``torch.load(weights_only=True)`` reads it)."""
        return {
            "schedule": self.schedule,
            "latent_space": self.latent_space,
            "vae_path": self.vae_path,
            "latent_scale": self.latent_scale,
            "vae_factor": self.vae_factor,
            "latent_shape": list(self.latent_shape),
            "num_classes": self.num_classes,
            "class_conditional": self.class_conditional,
        }

    @classmethod
    def from_checkpoint(cls, entry: Mapping[str, Any]) -> DiffusionSpec:
        """Read :meth:`to_checkpoint` output; entries of older checkpoints without a key take its default."""
        return cls(
            schedule=entry["schedule"],
            latent_shape=tuple(entry["latent_shape"]),
            num_classes=int(entry["num_classes"]),
            class_conditional=bool(entry["class_conditional"]),
            vae_path=entry.get("vae_path"),
            latent_space=bool(entry.get("latent_space", False)),
            latent_scale=float(entry.get("latent_scale", SD_LATENT_SCALE)),
            vae_factor=int(entry.get("vae_factor", SD_VAE_FACTOR)),
        )
