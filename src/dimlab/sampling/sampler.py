"""Turning a backbone (+ its :class:`DiffusionSpec`, + a VAE in latent space) into images.

Training-time sample grids, the FID callback, ``dimlab sample`` and ``dimlab fid`` all call
:meth:`Sampler.sample`, so a number logged during training and one computed offline come from the same code.
Sample ``i`` depends only on its label and its seed (:func:`per_sample_noise`); every tool derives the seeds
from one rule, :func:`dimlab.eval.split.sample_seeds`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from dimlab.data.vae import decode_latents, load_vae
from dimlab.diffusion.fast_eval import CompiledNetwork, compile_backend, fast_model_fn
from dimlab.diffusion.guidance import cfg_model_fn
from dimlab.diffusion.samplers import sample as run_sampler
from dimlab.diffusion.schedules import build_schedule
from dimlab.diffusion.skip_tune import skip_tune_scales
from dimlab.diffusion.upsample import upsample_guided_model_fn
from dimlab.errors import BadArgumentError, CheckpointFileError
from dimlab.models.checkpoint import backbone_from_checkpoint, instantiate_backbone, read_checkpoint
from dimlab.sampling.spec import CHECKPOINT_KEY, DiffusionSpec

__all__ = ["Sampler", "load_sampler", "per_sample_noise", "upsample_factor"]


def per_sample_noise(shape: Sequence[int], seeds: Sequence[int], device, dtype=torch.float32) -> torch.Tensor:
    """Initial noise where sample ``i`` depends only on ``seeds[i]``.

    This makes generation independent of how samples are split into batches or ranks: the same (seed, index)
    gives the same image on one GPU or eight.
    """
    noises = []
    for seed in seeds:
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        noises.append(torch.randn(tuple(shape), generator=g, dtype=torch.float32))
    return torch.stack(noises).to(device=device, dtype=dtype)


class Sampler:
    """Everything needed to draw images from a trained backbone: the network, its :class:`DiffusionSpec`, a VAE.

    With a VAE (latent space) the images are decoded from the ``spec.latent_shape`` latents the backbone denoises.
    """

    def __init__(self, backbone: nn.Module, spec: DiffusionSpec, vae: nn.Module | None = None) -> None:
        self.backbone = backbone
        self.spec = spec
        self.vae = vae
        self.schedule = build_schedule(spec.schedule)
        # CUDA-graphed guided model functions, reused across calls with the same shapes and settings (see sample()).
        self._graphed: dict = {}
        # torch.compile'd backbones per backend (see sample()); each keeps its compiled graphs per input shape.
        self._compiled: dict[str, CompiledNetwork] = {}

    @property
    def device(self) -> torch.device:
        """Where the backbone's parameters live (and the images are drawn)."""
        return next(self.backbone.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) the backbone denoises at its trained resolution."""
        return self.spec.latent_shape

    @property
    def num_classes(self) -> int:
        """The number of real classes (the null id is this number)."""
        return self.spec.num_classes

    @property
    def class_conditional(self) -> bool:
        """False: every sample uses the null class."""
        return self.spec.class_conditional

    @property
    def null_class(self) -> int:
        """The unconditional class id."""
        return self.spec.null_class

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the images at the trained resolution."""
        return self.spec.image_size

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor | Sequence[int] | None,
        seeds: Sequence[int],
        cfg_scale: float = 0.0,
        sampler: str = "dpm++",
        steps: int = 50,
        latent_shape: tuple[int, int, int] | None = None,
        model_fn_wrapper=None,
        skip_tune: tuple[float, float] | None = None,
        progress: bool = False,
        precision: str = "fp32",
        cuda_graphs: bool = False,
        compile: bool | str = False,
    ) -> torch.Tensor:
        """Draw ``len(seeds)`` images in [-1, 1], shape (B, C, H, W).

        ``labels`` are class ids (None or the null id for unconditional samples); ``cfg_scale`` uses the U-ViT
        convention ``eps_c + s (eps_c - eps_u)`` (guidance weight ``w = 1 + s``). ``latent_shape`` overrides the
        trained resolution (the backbones accept any grid). ``model_fn_wrapper`` may wrap the guided model
        function (for example upsample guidance) before the solver sees it. ``skip_tune=(rho_top, rho_bottom)``
        scales the decoder's incoming long skips by the intended time-dependent ramp (see
        :func:`dimlab.diffusion.upsample.skip_tune_scales`). ``precision="bf16"`` evaluates the network under bf16
        autocast; ``cuda_graphs=True`` (CUDA only) replays each network evaluation from a CUDA graph, captured
        once per batch shape and reused by later calls with the same settings (labels are copied into the graph's
        static buffer). ``compile=True`` runs the backbone through ``torch.compile`` (Inductor; a string names
        another backend), compiled once per input shape and kept for later calls: worth it when many batches
        follow (FID), not for one. See :mod:`dimlab.diffusion.fast_eval`.
        """
        device = self.device
        n = len(seeds)
        if labels is None or not self.class_conditional:
            y = torch.full((n,), self.null_class, dtype=torch.long, device=device)
        else:
            y = torch.as_tensor(labels, dtype=torch.long, device=device)
            if y.shape != (n,):
                raise ValueError(f"got {tuple(y.shape)} labels for {n} seeds")
            if (y < 0).any() or (y > self.null_class).any():
                raise ValueError(f"class labels must be in [0, {self.null_class}], got {y.tolist()}")
        shape = latent_shape or self.latent_shape
        noise = per_sample_noise(shape, seeds, device)
        guided = cfg_scale if self.class_conditional else 0.0
        model_fn = self._guided_model_fn(
            y, guided, skip_tune, precision, cuda_graphs, compile_backend(compile)
        )
        if model_fn_wrapper is not None:
            model_fn = model_fn_wrapper(model_fn)
        z = run_sampler(model_fn, self.schedule, noise, sampler=sampler, steps=steps, progress=progress)
        if self.vae is None:
            return z.clamp(-1, 1)
        return decode_latents(self.vae, z, scale=self.spec.latent_scale).clamp(-1, 1)

    def _network(self, backend: str | None):
        """The backbone, or its :class:`CompiledNetwork` for ``backend`` (made at the first request)."""
        if backend is None:
            return self.backbone
        if backend not in self._compiled:
            self._compiled[backend] = CompiledNetwork(self.backbone, backend)
        return self._compiled[backend]

    def _guided_model_fn(self, y, cfg_scale, skip_tune, precision, cuda_graphs, backend=None):
        """The CFG model function for labels ``y``, with ``precision``, a compiled backbone when ``backend`` names a
        ``torch.compile`` backend, and, optionally, CUDA-graph replay.

        With graphs, the labels live in a static buffer owned by the cached graphed function, so a later call with
        other labels (the next batch) replays the same graphs after copying its labels in.
        """
        network = self._network(backend)
        net = network if skip_tune is None else self._skip_tuned(*skip_tune, network)
        if not cuda_graphs:
            return fast_model_fn(cfg_model_fn(net, y, self.null_class, cfg_scale), self.device, precision)
        key = (y.shape[0], cfg_scale, skip_tune, precision, backend)
        if key not in self._graphed:
            static_y = y.clone()
            fn = fast_model_fn(
                cfg_model_fn(net, static_y, self.null_class, cfg_scale), self.device, precision, cuda_graphs
            )
            self._graphed[key] = (static_y, fn)
        static_y, fn = self._graphed[key]
        static_y.copy_(y)
        return fn

    def upsample_guidance(
        self,
        latent_shape: tuple[int, int, int],
        factor: int | None = None,
        theta: float = 1.0,
        eta: float = 0.3,
        T: float = 1.0,
        tau_bookkeeping: str = "clean",
    ):
        """A ``model_fn_wrapper`` for :meth:`sample` that adds upsample guidance at ``latent_shape``.

        The factor ``m`` is ``factor`` or, when omitted, inferred from the trained grid (see
        :func:`upsample_factor`); the other arguments go to
        :func:`dimlab.diffusion.upsample.upsample_guided_model_fn`. Use it with ``sampler="dpm"`` (plain
        DPM-Solver, as the released evaluator) and ``cfg_scale=3.0`` for the official 1024/1536 setting.
        """
        m = upsample_factor(
            self.latent_shape[1:],
            tuple(latent_shape[1:]),
            patch_size=int(getattr(self.backbone, "patch_size", 1)),
            factor=factor,
        )
        # validate the remaining settings now rather than at the first solver step
        upsample_guided_model_fn(
            lambda x, t: x, self.schedule, m, theta=theta, eta=eta, T=T, tau_bookkeeping=tau_bookkeeping
        )

        def wrapper(model_fn):
            return upsample_guided_model_fn(
                model_fn, self.schedule, m, theta=theta, eta=eta, T=T, tau_bookkeeping=tau_bookkeeping
            )

        return wrapper

    def _skip_tuned(self, rho_top: float, rho_bottom: float, network):
        """``network`` (the backbone or its compiled form) with skip-tune: every call derives the continuous time
        from the network time."""
        receivers = int(getattr(self.backbone, "num_skip_receivers", 0))
        if receivers == 0:
            raise ValueError("skip-tune needs a backbone with long skip connections")

        def net(x, t_net, y):
            t_net = torch.as_tensor(t_net, dtype=torch.float32, device=x.device).expand(x.shape[0])
            t_cont = self.schedule.continuous_time(t_net)
            scales = skip_tune_scales(t_cont, receivers, rho_top=rho_top, rho_bottom=rho_bottom)
            # the schedule's time is float64; float32 factors keep the residual stream in its own dtype
            scales = scales.to(torch.float32)
            return network(x, t_net, y, skip_scale=scales)

        return net


def upsample_factor(
    trained_hw: Sequence[int], target_hw: Sequence[int], patch_size: int = 1, factor: int | None = None
) -> int:
    """The upsample-guidance factor ``m`` for sampling a ``target_hw`` latent with a model trained at ``trained_hw``.

    Without ``factor``, the target must be the same integer multiple ``m >= 2`` of the trained grid in both
    dimensions (1024 px from a 512 model: ``m = 2``). With ``factor`` (needed for targets such as 2x by 3x), the
    low-resolution branch runs at ``target / m``, which need not be the trained grid (the backbone resizes its
    position table). Either way both target sides must divide by ``m`` and ``target / m`` by ``patch_size``.
    ValueError otherwise, naming the sizes.
    """
    (h0, w0), (h, w) = tuple(trained_hw), tuple(target_hw)
    if factor is None:
        if h % h0 or w % w0 or h // h0 != w // w0 or h // h0 < 2:
            raise ValueError(
                f"upsample guidance: the target latent {h}x{w} is not one integer multiple m >= 2 of the trained "
                f"latent {h0}x{w0} in both dimensions; pass the factor m explicitly (--ug-factor)"
            )
        factor = h // h0
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 2:
        raise ValueError(f"upsample guidance: the factor m must be an integer >= 2, got {factor!r}")
    if h % factor or w % factor or (h // factor) % patch_size or (w // factor) % patch_size:
        raise ValueError(
            f"upsample guidance: the target latent {h}x{w} must divide by m={factor}, and the low-resolution "
            f"latent {h / factor:g}x{w / factor:g} by the patch size {patch_size}"
        )
    return factor


def load_sampler(
    ckpt_path: str | Path,
    ema: bool = True,
    device: str | torch.device = "cpu",
    vae_path: str | None = None,
    trusted: bool = False,
) -> Sampler:
    """Build a :class:`Sampler` from a dimlab training checkpoint or converted backbone file, reading it once.

    EMA weights by default. The VAE folder recorded in the file is used unless ``vae_path`` overrides it
    (checkpoints move between machines; VAE folders do not travel with them). ``trusted=True`` lets the file
    hold arbitrary pickled objects (only for files you trust, see :func:`dimlab.models.torch_files.read_checkpoint`).
    """
    path = Path(ckpt_path)
    ckpt = read_checkpoint(path, trusted=trusted)
    entry = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if entry is None:
        raise CheckpointFileError(
            f"{path} has no sampling settings (no '{CHECKPOINT_KEY}' entry); expected a dimlab training checkpoint "
            "or a backbone file written by `dimlab convert-official` (re-convert it; for architectures of no "
            "official recipe, with --schedule and --space)"
        )
    spec = DiffusionSpec.from_checkpoint(entry)
    backbone = instantiate_backbone(*backbone_from_checkpoint(ckpt, ema=ema, where=path)).to(device).eval()
    vae = None
    if spec.latent_space:
        chosen_vae = vae_path or spec.vae_path
        if not chosen_vae:
            raise BadArgumentError(
                f"{path} is a latent-space model: pass its VAE folder with --vae PATH (vae_path= in Python; "
                "a diffusers AutoencoderKL folder, e.g. sd-vae-ft-ema)"
            )
        spec = dataclasses.replace(spec, vae_path=str(chosen_vae))
        vae = load_vae(chosen_vae, device=device)
    return Sampler(backbone, spec, vae)
