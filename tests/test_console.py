"""dimlab's Rich consoles keep long lines whole when the output is a log or a pipe, not a terminal."""

from __future__ import annotations

from dimlab.console import NON_TERMINAL_WIDTH, make_console


def test_long_lines_are_not_broken_when_the_output_is_not_a_terminal(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    line = "skipped /data/a/very/long/path/to/a/shard-000123.tar: " + "reason " * 40
    console = make_console()
    console.print(line)
    assert capsys.readouterr().out == line + "\n"
    assert console.width == NON_TERMINAL_WIDTH


def test_columns_in_the_environment_still_set_the_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert make_console().width == 100
