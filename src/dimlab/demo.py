"""Moved to :mod:`dimlab.demos.digits`; ``python -m dimlab.demo`` and these names keep working for one release."""

from dimlab.demos.digits import (
    DEFAULT_CONFIG,
    class_consistency,
    main,
    score_checkpoint,
    train_digit_classifier,
)

__all__ = ["DEFAULT_CONFIG", "class_consistency", "main", "score_checkpoint", "train_digit_classifier"]

if __name__ == "__main__":
    raise SystemExit(main())
