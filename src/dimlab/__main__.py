"""``python -m dimlab`` is the same as the ``dimlab`` console script."""

from dimlab.cli import main

if __name__ == "__main__":
    main()
