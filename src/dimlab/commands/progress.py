"""A progress bar over the images of a sampling run, with the time left (rich, the shard writers' columns)."""

from __future__ import annotations

from collections.abc import Callable

from dimlab.data.writers import make_progress

__all__ = ["SamplingProgress"]

ModelFnWrapper = Callable[[Callable], Callable]


class SamplingProgress:
    """``with SamplingProgress(num_images, steps) as bar:`` a rich bar of images drawn, time elapsed and time left.

    The bar moves at every network evaluation, not only once per batch, so the time left is known during the
    first batch (a run of one batch of 16 images would otherwise show nothing until it is done). Wrap each batch's
    guided model function with :meth:`counting` and call :meth:`batch_done` after it.
    """

    def __init__(self, num_images: int, steps: int, enabled: bool = True) -> None:
        self.steps = steps
        self.enabled = enabled
        self.progress = make_progress()
        self.task = self.progress.add_task("sampling images", total=num_images)

    def __enter__(self) -> SamplingProgress:
        if self.enabled:  # a bar that is never started draws nothing
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.stop()

    def counting(self, batch_size: int, inner: ModelFnWrapper | None = None) -> ModelFnWrapper:
        """A ``model_fn_wrapper`` (see :meth:`dimlab.sampling.sampler.Sampler.sample`) that applies ``inner``
        (e.g. upsample guidance) and advances the bar by ``batch_size / steps`` images per evaluation."""
        share = batch_size / max(self.steps, 1)

        def wrap(model_fn):
            guided = inner(model_fn) if inner is not None else model_fn

            def counted(x, t):
                out = guided(x, t)
                self.progress.advance(self.task, share)
                return out

            return counted

        return wrap

    def batch_done(self, images_done: int) -> None:
        """Set the bar to ``images_done`` (exact, whatever the number of evaluations the sampler made)."""
        self.progress.update(self.task, completed=images_done)
