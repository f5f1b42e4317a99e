"""The ``dimlab`` command: a dispatcher and one module per subcommand.

``fit | validate | test`` are LightningCLI subcommands (:mod:`dimlab.commands.fit`); every other
subcommand is a small argparse program in its own module, listed in :data:`dimlab.commands.main.SUBCOMMANDS`.
Nothing outside this package (and the demos) imports from it.
"""
