"""High resolution: weak-to-strong fine-tuning (256 -> 512) helpers and the toy fine-tune demo.

* :mod:`dimlab.highres.check_finetune_inputs`: the pre-flight check ``make finetune-512`` runs before
  ``dimlab fit`` (the low-resolution checkpoint loads into the fine-tune model; the data matches the config).
* :mod:`dimlab.highres.finetune_demo`: CPU toy version of the fine-tune on the digits shards (8 px -> 16 px),
  showing that the initialised model starts from a far lower loss than a fresh one.

Training-free upsampling itself lives on the shared sampling path (``dimlab sample --upsample-guidance``,
:meth:`dimlab.sampling.sampler.Sampler.upsample_guidance`); see ``docs/highres.md``.
"""
