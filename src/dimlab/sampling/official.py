"""What the official DiM recipes fix about sampling, for weights converted by ``dimlab convert-official``.

Official checkpoints hold only the network. Its architecture tells which released recipe trained it (the table
in docs/backbone.md, "Presets"): 3 input channels is the CIFAR-10 recipe (32x32 pixels, VP-SDE, 10 classes,
trained unconditionally), 4 input channels the ImageNet one (SD-VAE latents scaled by 0.18215, the discrete SD
schedule, 1000 classes, class-conditional). :func:`official_diffusion_spec` turns that into the
:class:`DiffusionSpec` a dimlab checkpoint carries, so ``dimlab sample`` and ``dimlab fid`` take the converted
file as they take a training checkpoint. Any field can be given instead; other architectures get a spec only
when it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dimlab.data.vae import SD_LATENT_SCALE, SD_VAE_FACTOR
from dimlab.errors import BadArgumentError
from dimlab.sampling.spec import DiffusionSpec

__all__ = ["OFFICIAL_RECIPES", "SPACES", "official_diffusion_spec"]

#: The data spaces a converted model may denoise.
SPACES = ("pixels", "latents")

#: input channels of the official network -> (recipe, schedule, space, class-conditional)
OFFICIAL_RECIPES: dict[int, tuple[str, str, str, bool]] = {
    3: ("CIFAR-10 (32x32 pixels, VP-SDE, trained unconditionally)", "vp_sde", "pixels", False),
    4: ("ImageNet (SD-VAE latents, discrete SD schedule, class-conditional)", "sd_discrete", "latents", True),
}


def official_diffusion_spec(
    init_args: Mapping[str, Any],
    schedule: str | None = None,
    space: str | None = None,
    class_conditional: bool | None = None,
    vae_path: str | None = None,
) -> DiffusionSpec | None:
    """The :class:`DiffusionSpec` of a converted official DiM whose constructor arguments are ``init_args``.

    ``schedule``, ``space`` (``"pixels"`` / ``"latents"``) and ``class_conditional`` override the recipe that
    the input channels imply (:data:`OFFICIAL_RECIPES`). Without a recipe, ``schedule`` and ``space`` give the
    spec; None when neither is given (nothing to record). ``vae_path`` records the VAE folder of a latent-space
    model. BadArgumentError naming the flag (``--schedule``, ``--space``, ``--vae``) when settings are missing
    or contradict each other.
    """
    channels = int(init_args["in_channels"])
    recipe = OFFICIAL_RECIPES.get(channels)
    if (
        recipe is None
        and schedule is None
        and space is None
        and class_conditional is None
        and vae_path is None
    ):
        return None
    if recipe is None and (schedule is None or space is None):
        known = "; ".join(f"{c}: {name}" for c, (name, *_) in OFFICIAL_RECIPES.items())
        raise BadArgumentError(
            f"in_channels={channels} matches no official recipe ({known}); pass --schedule and --space "
            "(and --class-conditional or --no-class-conditional)"
        )
    _, recipe_schedule, recipe_space, recipe_conditional = recipe or (None, None, None, True)
    space = space or recipe_space
    if space not in SPACES:
        raise BadArgumentError(f"--space {space}: expected one of {', '.join(SPACES)}")
    if vae_path is not None and space == "pixels":
        raise BadArgumentError(f"--vae {vae_path}: this model denoises pixels; a VAE needs --space latents")
    return DiffusionSpec(
        schedule=schedule or recipe_schedule,
        latent_shape=(channels, init_args["input_size"], init_args["input_size"]),
        num_classes=int(init_args["num_classes"]),
        class_conditional=recipe_conditional if class_conditional is None else class_conditional,
        vae_path=vae_path,
        latent_space=space == "latents",
        latent_scale=SD_LATENT_SCALE,
        vae_factor=SD_VAE_FACTOR,
    )
