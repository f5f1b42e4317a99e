"""The ``lightning`` console script: ``pip install -e .`` installs it, and it runs dimlab's LightningCLI.

The metadata comes from the same PEP 517 hook pip calls for an editable install (setuptools'
``prepare_metadata_for_build_editable``), run on a copy of the project, so the test sees the entry point exactly as
``pip install -e .`` would install it, without reinstalling anything.
"""

from __future__ import annotations

import importlib.metadata as md
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dimlab.commands.main import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def console_scripts(tmp_path_factory) -> dict[str, md.EntryPoint]:
    """The console scripts of the distribution that ``pip install -e .`` would install."""
    project = tmp_path_factory.mktemp("project")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (project / "meta").mkdir()
    hook = "from setuptools import build_meta; print(build_meta.prepare_metadata_for_build_editable('meta'))"
    done = subprocess.run(
        [sys.executable, "-c", hook], cwd=project, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    dist = md.PathDistribution(project / "meta" / done.stdout.split()[-1])
    return {ep.name: ep for ep in dist.entry_points if ep.group == "console_scripts"}


def test_lightning_is_installed_as_an_alias_of_dimlab(console_scripts):
    assert "lightning" in console_scripts, sorted(console_scripts)
    assert console_scripts["lightning"].value == console_scripts["dimlab"].value
    assert console_scripts["lightning"].load() is main


def test_lightning_help_lists_fit_validate_test(console_scripts, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["lightning", "--help"])
    assert console_scripts["lightning"].load()() == 0
    listing = capsys.readouterr().out
    assert all(f"  {name} " in listing for name in ("fit", "validate", "test"))


def test_lightning_fit_print_config_runs_the_dimlab_cli(console_scripts, monkeypatch, capsys):
    config = REPO / "experiments" / "demo" / "digits.yaml"
    monkeypatch.setattr(sys, "argv", ["lightning", "fit", "--config", str(config), "--print_config"])
    with pytest.raises(SystemExit) as info:
        console_scripts["lightning"].load()()
    assert info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["backbone"]["class_path"] == "dimlab.models.dim.DiM"
    assert printed["checkpoint"]["save_last"] is True  # DimlabCLI's own default: the same CLI as `dimlab fit`
