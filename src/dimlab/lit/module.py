"""The DiffusionModule: epsilon-prediction training of any dimlab backbone with Lightning."""

from __future__ import annotations

import logging
import time
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import nn

from dimlab.data.vae import SD_LATENT_SCALE, encode_moments, load_vae, sample_from_moments
from dimlab.diffusion.loss import epsilon_loss
from dimlab.diffusion.schedules import build_schedule
from dimlab.lit.ema import EMA, exclude_from_fsdp, fsdp_root, restore_ema_state, store_ema_state, update_ema
from dimlab.lit.optim_step import StepGradNorm, clip_to_norm, use_fused_adamw
from dimlab.models.checkpoint import load_weights_adapting, read_backbone_file
from dimlab.models.spec import backbone_spec
from dimlab.models.weight_decay import no_weight_decay_names
from dimlab.sampling.sampler import Sampler
from dimlab.sampling.spec import CHECKPOINT_KEY as DIFFUSION_SPEC_KEY
from dimlab.sampling.spec import DiffusionSpec

log = logging.getLogger("dimlab")

# Where the EMA's weights sit in the module's state dict (the attribute ``ema``, an EMA wrapping ``module``).
_EMA_PREFIX = "ema.module."
# Top-level submodules that are in eval mode on purpose: the EMA copy and the frozen VAE.
_EVAL_BY_DESIGN = ("ema", "_vae")


def no_decay_parameter_names(backbone: nn.Module) -> set[str]:
    """Names of parameters that the "standard" weight-decay mode leaves undecayed.

    The backbone's own ``no_weight_decay_names()`` (DiM, U-ViT); for any other module the shared rule of
    :mod:`dimlab.models.weight_decay` with embedding tables exempt: biases and other 1-D parameters (norm
    weights), mamba-ssm's marked ``A_log`` / ``D`` and embeddings.
    """
    own = getattr(backbone, "no_weight_decay_names", None)
    if callable(own):
        return set(own())
    return no_weight_decay_names(backbone, module_types=(nn.Embedding,))


def load_initial_weights(backbone: nn.Module, path: str, ema: bool = True):
    """Copy weights from a checkpoint into ``backbone``, adapting the position table; log what changed."""
    spec, weights = read_backbone_file(path, map_location="cpu", ema=ema)
    theirs, ours = spec["class_path"], backbone_spec(backbone)["class_path"]
    if theirs != ours:
        raise ValueError(
            f"model.init_from={path} holds a {theirs} backbone, but model.backbone is a {ours}: "
            "weights only transfer within one architecture"
        )
    report = load_weights_adapting(backbone, weights)
    log.info(
        "initialised from %s (%s weights): %d copied, resized %s, newly initialised %s, ignored %s",
        path,
        "EMA" if ema else "raw",
        len(report.copied),
        report.resized or "none",
        report.newly_initialised or "none",
        report.unexpected or "none",
    )
    return report


class DiffusionModule(L.LightningModule):
    """Trains a backbone ``(x, t, y) -> eps`` with the DiM/U-ViT recipes.

    It owns the loss (epsilon MSE, uniform times, classifier-free-guidance label dropout), AdamW with the official
    hyper-parameters, linear warmup then constant LR, the EMA of the backbone, the optional frozen VAE for latent
    space, sampling for callbacks, and step-wise logging. Gradient clipping, precision and accumulation are the
    Trainer's (``gradient_clip_val``, ``precision: bf16-mixed``, ``accumulate_grad_batches``); LR warmup and EMA
    advance once per optimizer step, so accumulation is handled correctly (unlike the official code:
    docs/diffusion.md, "Training").

    Args:
        backbone: the network, e.g. ``dimlab.models.dim.DiM`` or ``dimlab.models.uvit.UViT`` (``class_path`` in YAML).
        schedule: ``sd_discrete`` (ImageNet latents) or ``vp_sde`` (CIFAR-10 pixels).
        class_conditional: False trains unconditionally (every label is the null id, as DiM's CIFAR-10 recipe).
        p_uncond: probability of replacing a label by the null id (CFG dropout); done here, not in the data.
        lr, betas, adam_eps, weight_decay: AdamW settings. AdamW runs fused (``fused=True``) when every parameter
            is on a CUDA device, except under a gradient scaler (``16-mixed``) or clipping by value
            (:func:`dimlab.lit.optim_step.use_fused_adamw`); one gradient norm per step serves the
            ``train/grad_norm`` log, :class:`~dimlab.lit.faults.NonFiniteGuard` and norm clipping.
        weight_decay_mode: ``all`` (official: every parameter) or ``standard`` (no decay on norms, embeddings,
            pad tokens, biases, A_log, D).
        warmup_steps: linear warmup from 0 over this many optimizer steps, then constant.
        ema_decay: EMA rate from step 1 (0.9999 in every official recipe).
        vae_path: local ``diffusers`` AutoencoderKL folder; set for latent-space training.
        latent_scale: the VAE latent scale (0.18215 for the SD kl-f8 VAE).
        latent_shape: (C, H, W) the backbone sees; derived from the backbone when omitted.
        compile: wrap the backbone's forward in ``torch.compile``.
        bf16_timesteps: reproduce the official bf16 rounding of the network time (a documented bug; off).
        seed: base seed of the per-step noise generator (steps are reproducible across resumes).
        init_from: a dimlab checkpoint or converted official backbone file to start from (weak-to-strong
            fine-tuning): matching tensors are copied, the position table is resized bilinearly when the grid
            differs, and the report of resized / newly initialised tensors is logged. The EMA starts as a copy
            of the loaded weights, as in the official fine-tune.
        init_from_ema: read the EMA weights of ``init_from`` when it holds both.
    """

    def __init__(
        self,
        backbone: nn.Module,
        schedule: Literal["sd_discrete", "vp_sde"] = "sd_discrete",
        class_conditional: bool = True,
        p_uncond: float = 0.1,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.99, 0.99),
        adam_eps: float = 1e-15,
        weight_decay: float = 0.03,
        weight_decay_mode: Literal["all", "standard"] = "all",
        warmup_steps: int = 5000,
        ema_decay: float = 0.9999,
        vae_path: str | None = None,
        latent_scale: float = SD_LATENT_SCALE,
        latent_shape: tuple[int, int, int] | None = None,
        compile: bool = False,
        bf16_timesteps: bool = False,
        seed: int = 0,
        init_from: str | None = None,
        init_from_ema: bool = True,
    ):
        super().__init__()
        if not 0.0 <= p_uncond < 1.0:
            raise ValueError(f"model.p_uncond must be in [0, 1), got {p_uncond}")
        if warmup_steps < 0:
            raise ValueError(f"model.warmup_steps must be >= 0, got {warmup_steps}")
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.init_report = load_initial_weights(backbone, init_from, init_from_ema) if init_from else None
        self.ema = EMA(backbone, ema_decay)
        self.schedule = build_schedule(schedule)
        args = backbone_spec(backbone)["init_args"]
        num_classes = int(args.get("num_classes") or 0)
        if class_conditional and num_classes <= 0:
            raise ValueError("model.class_conditional=true needs a backbone with num_classes > 0")
        if not latent_shape:
            size = args["input_size"]
            hw = (size, size) if isinstance(size, int) else tuple(size)
            latent_shape = (int(args["in_channels"]), *hw)
        #: What the checkpoints record about sampling this model (see dimlab.sampling.spec).
        self.spec = DiffusionSpec(
            schedule=schedule,
            latent_shape=tuple(latent_shape),
            num_classes=num_classes,
            class_conditional=class_conditional,
            vae_path=vae_path,
            latent_space=vae_path is not None,
            latent_scale=latent_scale,
        )
        self.latent_shape, self.num_classes = self.spec.latent_shape, self.spec.num_classes
        self._vae = None
        self._forward = backbone
        self._step_t0: float | None = None
        # Set by dimlab.lit.faults.NonFiniteGuard when it dropped a step's gradients: the EMA must not advance.
        self.optimizer_step_skipped = False
        #: This step's gradient norm, shared by NonFiniteGuard, the grad-norm log and clipping (one computation).
        self.step_grad_norm = StepGradNorm()
        #: Names passed to :meth:`log` (by the module or a callback) since dimlab.lit.callbacks.RunSummary last
        #: took them, so summary.json can say at which step each metric was logged.
        self.recently_logged: set[str] = set()

    def log(self, name: str, value, *args, **kwargs) -> None:
        """``LightningModule.log``, remembering ``name`` in :attr:`recently_logged`."""
        super().log(name, value, *args, **kwargs)
        self.recently_logged.add(name)

    # ----------------------------------------------------------------------------------------------- set-up
    @property
    def latent_space(self) -> bool:
        """Whether the backbone denoises VAE latents (``vae_path`` set) rather than pixels."""
        return self.spec.latent_space

    @property
    def null_class(self) -> int:
        """The unconditional class id."""
        return self.spec.null_class

    def configure_model(self) -> None:
        """Compile the forward when asked, and keep the EMA out of FSDP's sharding."""
        if self.hparams.compile and self._forward is self.backbone:
            self._forward = torch.compile(self.backbone)
        strategy = self._trainer.strategy if self._trainer is not None else None
        exclude_from_fsdp(strategy, self.ema)

    def setup(self, stage: str) -> None:
        """Load the VAE now (a missing folder fails before the first step) unless the data are latent shards:
        then only decoding needs it, and the callbacks that decode (SampleGrid, FIDCallback) load it in their
        own ``setup``, so training on latents works without the VAE folder on the machine."""
        datamodule = getattr(self._trainer, "datamodule", None)
        if self.latent_space and self._vae is None and getattr(datamodule, "kind", None) != "latents":
            self._vae = self._load_vae()

    def _load_vae(self):
        return load_vae(self.hparams.vae_path, device=self.device)

    @property
    def vae(self):
        if self.latent_space and self._vae is None:
            self._vae = self._load_vae()
        return self._vae

    # ------------------------------------------------------------------------------------------- training
    def _step_generator(self) -> torch.Generator:
        """A generator seeded by (seed, step, rank): the noise of step k is the same on resume."""
        seed = (self.hparams.seed * 1_000_003 + self.global_step * 7919 + self.global_rank) % (2**63 - 1)
        device = self.device if self.device.type == "cuda" else "cpu"
        return torch.Generator(device=device).manual_seed(seed)

    @torch.no_grad()
    def to_model_space(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Map a data batch to what the backbone denoises.

        Pixels pass through; in latent space, 8-channel VAE moments are sampled (mean + std * noise) and 3-channel
        images are encoded on the fly (posterior sample), both times ``latent_scale``.
        """
        if not self.latent_space:
            return x
        latent_c = self.latent_shape[0]
        if x.shape[1] == 2 * latent_c:
            moments = x
        elif x.shape[1] == 3:
            moments = encode_moments(self.vae, x)
        else:
            raise ValueError(
                f"latent-space batch has {x.shape[1]} channels: expected 3 (images) or {2 * latent_c} (VAE moments)"
            )
        return sample_from_moments(moments.float(), generator=generator, scale=self.hparams.latent_scale)

    def _labels(self, y: torch.Tensor | None, batch: int, generator: torch.Generator) -> torch.Tensor:
        null = torch.full((batch,), self.null_class, dtype=torch.long, device=self.device)
        if not self.hparams.class_conditional or y is None:
            return null
        y = y.to(self.device, torch.long)
        if self.hparams.p_uncond > 0:
            drop = (
                torch.rand(batch, device=generator.device, generator=generator).to(self.device)
                < self.hparams.p_uncond
            )
            y = torch.where(drop, null, y)
        return y

    def _model_fn(self, x, t, y):
        return self._forward(x, t, y)

    def _check_model_space(self, x: torch.Tensor, x0: torch.Tensor) -> None:
        """Fail clearly when a batch does not give the model inputs the module was built for.

        A DiM accepts any multiple of its patch size (the position table is resized), so without this a
        ``data.resolution`` that disagrees with the backbone's ``input_size`` would silently train at another
        resolution.
        """
        if tuple(x0.shape[1:]) == tuple(self.latent_shape):
            return
        c, h, w = self.latent_shape
        if self.latent_space:
            f = self.spec.vae_factor
            expected = (
                f"images of {f * h}x{f * w} pixels (the VAE downsamples by {f}, so data.resolution must be a "
                f"multiple of {f}) or VAE moments of shape ({2 * c}, {h}, {w})"
            )
        else:
            expected = f"pixel batches of shape ({c}, {h}, {w})"
        raise ValueError(
            f"a data batch of shape {tuple(x.shape[1:])} gives model inputs of shape {tuple(x0.shape[1:])}, but "
            f"the model was built for {tuple(self.latent_shape)} (model.backbone input_size / in_channels, or "
            f"model.latent_shape): expected {expected}; check data.resolution and data.channels"
        )

    def training_step(self, batch, batch_idx):
        x, y = batch["x"], batch.get("y")
        g = self._step_generator()
        x0 = self.to_model_space(x, generator=g)
        self._check_model_space(x, x0)
        labels = self._labels(y, x0.shape[0], g)
        losses = epsilon_loss(
            self._model_fn, self.schedule, x0, labels, generator=g, bf16_timesteps=self.hparams.bf16_timesteps
        )
        loss = losses.mean()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=x0.shape[0])
        return loss

    def _ema_loss(self, batch, batch_idx) -> tuple[torch.Tensor, int]:
        """Mean epsilon loss of the EMA weights on a batch, with noise and times fixed by (seed, batch index)."""
        x, y = batch["x"], batch.get("y")
        g_device = self.device if self.device.type == "cuda" else "cpu"
        g = torch.Generator(device=g_device).manual_seed(self.hparams.seed + batch_idx)
        x0 = self.to_model_space(x, generator=g)
        self._check_model_space(x, x0)
        labels = self._labels(y, x0.shape[0], g)
        ema_fn = self.ema.module
        losses = epsilon_loss(lambda a, b, c: ema_fn(a, b, c), self.schedule, x0, labels, generator=g)
        return losses.mean(), x0.shape[0]

    def validation_step(self, batch, batch_idx):
        loss, n = self._ema_loss(batch, batch_idx)
        self.log("val/loss_ema", loss, sync_dist=True, batch_size=n)

    def test_step(self, batch, batch_idx):
        loss, n = self._ema_loss(batch, batch_idx)
        self.log("test/loss_ema", loss, sync_dist=True, batch_size=n)

    def on_train_batch_start(self, batch, batch_idx):
        if self._step_t0 is None:
            self._step_t0 = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self._step_t0 is None:
            return
        dt = time.perf_counter() - self._step_t0
        self._step_t0 = time.perf_counter()
        n = batch["x"].shape[0]
        if dt > 0:
            self.log("perf/images_per_sec", n / dt, on_step=True, on_epoch=False, batch_size=n)
            self.log(
                "perf/samples_per_sec_global",
                n * self.trainer.world_size / dt,
                on_step=True,
                on_epoch=False,
                batch_size=n,
            )
        if self.device.type == "cuda":
            self.log(
                "perf/peak_mem_gb",
                torch.cuda.max_memory_allocated(self.device) / 2**30,
                on_step=True,
                on_epoch=False,
                batch_size=n,
            )

    def on_after_backward(self) -> None:
        self.step_grad_norm.invalidate()

    def on_before_optimizer_step(self, optimizer):
        total = self.step_grad_norm.get(optimizer)
        if total is not None:
            self.log("train/grad_norm", total, on_step=True, on_epoch=False)
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)

    def on_train_start(self) -> None:
        # Lightning warns "Found N module(s) in eval mode" on every run, since the EMA copy (and a frozen VAE) are
        # in eval mode by design; dimlab fit silences that, and this names only modules in eval mode by mistake.
        by_mistake = [
            name
            for name, module in self.named_modules()
            if not module.training and name.split(".")[0] not in _EVAL_BY_DESIGN
        ]
        if by_mistake:
            shown = ", ".join(by_mistake[:10]) + (
                f" and {len(by_mistake) - 10} more" if len(by_mistake) > 10 else ""
            )
            rank_zero_warn(
                f"{len(by_mistake)} module(s) are in eval mode at the start of training: {shown}. They train with "
                "eval behaviour (dropout off, frozen norm statistics); call .train() on them if that is not intended.",
                category=PossibleUserWarning,
            )

    def on_fit_start(self) -> None:
        if fsdp_root(self._trainer) is not None:
            self.ema.to(self.trainer.strategy.root_device)  # FSDP moves only what it manages

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        root = fsdp_root(self._trainer)
        if root is not None and gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            root.clip_grad_norm_(
                gradient_clip_val
            )  # the norm over all shards (Lightning's own clipping refuses FSDP)
            return
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            # What Lightning's norm clipping does, with the norm this step already computed
            clip_to_norm(optimizer, float(gradient_clip_val), self.step_grad_norm.get(optimizer))
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(self, *args, **kwargs):
        """The optimizer step, then one EMA step (none when NonFiniteGuard dropped this step's gradients)."""
        super().optimizer_step(*args, **kwargs)
        if self.optimizer_step_skipped:
            self.optimizer_step_skipped = False
            return
        update_ema(self.ema, self.backbone, self._trainer)

    def configure_optimizers(self):
        hp = self.hparams
        if hp.weight_decay_mode == "all":
            groups = [
                {
                    "params": [p for p in self.backbone.parameters() if p.requires_grad],
                    "weight_decay": hp.weight_decay,
                }
            ]
        else:
            skip = no_decay_parameter_names(self.backbone)
            decay, no_decay = [], []
            for name, p in self.backbone.named_parameters():
                if p.requires_grad:
                    (no_decay if name in skip else decay).append(p)
            groups = [
                {"params": decay, "weight_decay": hp.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ]
        params = [p for g in groups for p in g["params"]]
        fused = use_fused_adamw(params, self._trainer)
        opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.adam_eps, fused=fused or None)
        warmup = hp.warmup_steps

        def lr_lambda(step: int) -> float:
            # Official "customized" schedule: min(step / warmup, 1); the very first update runs at lr 0.
            return 1.0 if warmup == 0 else min(step / warmup, 1.0)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # ----------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Add what rebuilds the backbone and samples from it: EMA weights, backbone spec, DiffusionSpec."""
        store_ema_state(checkpoint, self.ema, _EMA_PREFIX, self._trainer)
        checkpoint["dimlab_backbone"] = backbone_spec(self.backbone)
        checkpoint[DIFFUSION_SPEC_KEY] = self.spec.to_checkpoint()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Put the EMA weights back where Lightning loads the module state from."""
        restore_ema_state(checkpoint, self.ema, _EMA_PREFIX)

    # ---------------------------------------------------------------------------------------------- sampling
    def sampler(self, use_ema: bool = True) -> Sampler:
        """A :class:`Sampler` over the EMA (default) or raw backbone, sharing this module's VAE."""
        return Sampler(self.ema.module if use_ema else self.backbone, self.spec, self.vae)

    def grid_labels(self, per_class: int, max_classes: int = 10) -> list[int]:
        """Labels for a sample grid: one row per class (the first ``max_classes``), ``per_class`` columns."""
        if not self.hparams.class_conditional:
            return [self.null_class] * (per_class * max_classes)
        classes = range(min(self.num_classes, max_classes))
        return [c for c in classes for _ in range(per_class)]
