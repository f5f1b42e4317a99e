"""``python -m dimlab`` is the same as the ``dimlab`` console script."""

from dimlab.commands.main import main

if __name__ == "__main__":
    raise SystemExit(main())
