"""The Stable-Diffusion VAE (diffusers ``AutoencoderKL``): loading, posterior moments, sampling, decoding.

Latent diffusion in DiM / U-ViT works on ``0.18215 * z`` where ``z`` is a sample of the VAE posterior
``N(mean, exp(logvar))``. The posterior *moments* (mean and logvar stacked, 8 channels for the 4-channel
SD VAE) are what the latent shards store, so every training step can draw a fresh posterior sample.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

#: The scale of the SD VAE's latents (``0.18215 * z`` is what the diffusion models see).
SD_LATENT_SCALE = 0.18215
#: The SD VAE (kl-f8) downsamples by 8 in each dimension: a 256 px image is a 32x32 latent.
SD_VAE_FACTOR = 8
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# diffusers' DiagonalGaussianDistribution clamps logvar to this range before use
LOGVAR_RANGE = (-30.0, 20.0)


def load_vae(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load a diffusers ``AutoencoderKL`` saved with ``save_pretrained`` from a local folder, frozen, eval mode.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the folder when it is missing or is not a diffusers
    VAE (a ``config.json`` with ``_class_name: AutoencoderKL`` plus ``diffusion_pytorch_model`` weights).
    """
    folder = Path(path)
    expected = (
        "a diffusers AutoencoderKL folder with config.json and diffusion_pytorch_model.safetensors (or .bin)"
    )
    if not folder.is_dir():
        raise FileNotFoundError(f"VAE folder {folder} not found; expected {expected}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"VAE folder {folder} has no config.json; expected {expected}")
    try:
        class_name = json.loads(config_path.read_text()).get("_class_name")
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path}: not valid JSON ({exc}); expected {expected}") from exc
    if class_name not in (None, "AutoencoderKL"):
        raise ValueError(f"{config_path}: _class_name is {class_name!r}; expected {expected}")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(
            f"VAE folder {folder} has no weights ({' or '.join(WEIGHT_FILES)}); expected {expected}"
        )
    # Imported here, not at the top: diffusers' autoencoder stack takes ~2 s to import, and every command that
    # imports this module (sample, fid, shards) also runs pixel-space models that never load a VAE.
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype)
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode_moments(vae, images: torch.Tensor) -> torch.Tensor:
    """Posterior moments ``(B, 2 * latent_channels, H/8, W/8)`` (mean then logvar) of images in [-1, 1]."""
    if images.ndim != 4 or images.shape[1] != vae.config.in_channels:
        raise ValueError(
            f"encode_moments: expected images (B, {vae.config.in_channels}, H, W) in [-1, 1], got {tuple(images.shape)}"
        )
    parameters = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist.parameters
    return parameters


def sample_from_moments(
    moments: torch.Tensor, generator: torch.Generator | None = None, scale: float = SD_LATENT_SCALE
) -> torch.Tensor:
    """Draw ``scale * (mean + exp(logvar / 2) * noise)`` from moments ``(B, 2C, h, w)``; returns (B, C, h, w)."""
    if moments.ndim != 4 or moments.shape[1] % 2:
        raise ValueError(f"sample_from_moments: expected (B, 2C, h, w) moments, got {tuple(moments.shape)}")
    mean, logvar = moments.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE))
    noise = torch.randn(mean.shape, generator=generator, device=moments.device, dtype=moments.dtype)
    return (mean + std * noise) * scale


@torch.no_grad()
def decode_latents(vae, z: torch.Tensor, scale: float = SD_LATENT_SCALE) -> torch.Tensor:
    """Decode scaled latents ``z`` (B, C, h, w) to images in [-1, 1] (B, 3, 8h, 8w), in ``z``'s dtype."""
    images = vae.decode(z.to(device=vae.device, dtype=vae.dtype) / scale).sample
    return images.clamp(-1.0, 1.0).to(z.dtype)
