"""Moved, kept for one release: the fine-tune pre-flight check is ``dimlab check-finetune``
(:mod:`dimlab.commands.check_finetune`), the toy fine-tune demo :mod:`dimlab.demos.finetune`.

Training-free upsampling lives on the shared sampling path (``dimlab sample --upsample-guidance``,
:meth:`dimlab.sampling.sampler.Sampler.upsample_guidance`); see ``docs/highres.md``.
"""
