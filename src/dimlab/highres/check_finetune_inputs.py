"""Moved to :mod:`dimlab.commands.check_finetune` (``dimlab check-finetune``); this path, and
``python -m dimlab.highres.check_finetune_inputs``, keep working for one release."""

from dimlab.commands.check_finetune import (
    FinetuneInputError,
    FinetuneInputs,
    check_checkpoint,
    check_data,
    check_finetune_inputs,
    main,
    read_fit_config,
)

__all__ = [
    "FinetuneInputError",
    "FinetuneInputs",
    "check_checkpoint",
    "check_data",
    "check_finetune_inputs",
    "main",
    "read_fit_config",
]

if __name__ == "__main__":
    raise SystemExit(main())
