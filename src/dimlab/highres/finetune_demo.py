"""Moved to :mod:`dimlab.demos.finetune`; ``python -m dimlab.highres.finetune_demo`` and these names keep working
for one release."""

from dimlab.demos.finetune import DemoSettings, main, print_report, run_demo

__all__ = ["DemoSettings", "main", "print_report", "run_demo"]

if __name__ == "__main__":
    raise SystemExit(main())
