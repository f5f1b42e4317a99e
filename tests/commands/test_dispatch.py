"""The ``dimlab`` dispatcher: every subcommand listed, Lightning imported only for fit / validate / test, no
``predict``, and the exit status of ``python -m dimlab``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dimlab.commands.main import LIGHTNING_COMMANDS, SUBCOMMANDS, main

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _modules_after(argv: list[str]) -> set[str]:
    """The top-level modules imported by ``main(argv)`` in a fresh interpreter (the output is discarded)."""
    code = (
        "import sys, contextlib, io\n"
        "from dimlab.commands.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_help_and_no_command_list_every_subcommand(capsys):
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    for name in (*LIGHTNING_COMMANDS, *SUBCOMMANDS):
        assert f"  {name} " in listing, name
    assert "predict" not in listing
    assert main([]) == 2  # no command: the same list, and a usage error
    assert capsys.readouterr().out == listing


def test_help_imports_neither_lightning_nor_torch():
    loaded = _modules_after(["--help"])
    assert "lightning" not in loaded and "torch" not in loaded


#: check-finetune is fit's pre-flight: it resolves the data through the real ShardDataModule, a LightningDataModule.
NEEDS_LIGHTNING = {"check-finetune"}


@pytest.mark.parametrize("command", sorted(set(SUBCOMMANDS) - NEEDS_LIGHTNING))
def test_other_subcommands_start_without_lightning(command):
    assert "lightning" not in _modules_after([command, "--help"]), (
        f"dimlab {command} --help imported Lightning"
    )


def test_predict_points_to_dimlab_sample(capsys):
    assert main(["predict", "--config", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dimlab sample --ckpt" in err


def test_unknown_command_is_one_line(capsys):
    assert main(["smaple"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'smaple'" in err and "sample" in err


def test_lightning_cli_offers_fit_validate_test_only(capsys):
    from dimlab.commands.fit import DimlabCLI

    assert set(DimlabCLI.subcommands()) == set(LIGHTNING_COMMANDS) == {"fit", "validate", "test"}
    with pytest.raises(SystemExit) as info:
        main(["fit", "--help"])
    assert info.value.code == 0 and "--trainer" in capsys.readouterr().out


def test_python_m_dimlab_exits_with_the_command_status():
    done = subprocess.run(
        [sys.executable, "-m", "dimlab", "no-such-command"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "no-such-command" in done.stderr
