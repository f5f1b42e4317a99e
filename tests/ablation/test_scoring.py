"""The matrix ``scorer``: validated at load time, run once per checkpoint, its numbers in the results."""

from __future__ import annotations

import json
import os

import pytest

from dimlab.ablation.matrix import MatrixError, load_matrix
from dimlab.ablation.results import collect_results
from dimlab.ablation.scoring import score_row

SCORER_MODULE = '''
import json
from pathlib import Path

def checkpoint_size(checkpoint, log, scale=1.0):
    """Scores a checkpoint by its size and records each call in ``log``."""
    calls = json.loads(Path(log).read_text()) if Path(log).exists() else []
    Path(log).write_text(json.dumps(calls + [str(checkpoint)]))
    return {"size_score": Path(checkpoint).stat().st_size * scale, "label": "not a number", "nan": float("nan")}
'''


@pytest.fixture
def scorer_module(tmp_path, monkeypatch):
    (tmp_path / "ablation_test_scorers.py").write_text(SCORER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "ablation_test_scorers"


def test_scorer_runs_once_per_checkpoint_and_feeds_the_results(
    experiment, write_matrix, tmp_path, scorer_module
):
    log = tmp_path / "calls.json"
    out = tmp_path / "out"
    matrix = load_matrix(
        write_matrix(
            {
                "base": "../experiments/tiny.yaml",
                "output_dir": str(out),
                "design": [{"name": "a"}],
                "metrics": ["size_score"],
                "scorer": {
                    "callable": f"{scorer_module}.checkpoint_size",
                    "args": {"log": str(log), "scale": 2},
                },
            }
        )
    )
    checkpoint = out / "a" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"12345")

    assert score_row(matrix.scorer, out / "a") == {"size_score": 10.0}  # non-numeric and NaN values dropped
    assert score_row(matrix.scorer, out / "a") == {"size_score": 10.0}
    assert len(json.loads(log.read_text())) == 1  # the second call used score.json

    checkpoint.write_bytes(b"1234567")
    os.utime(checkpoint, ns=(1, 1))
    assert score_row(matrix.scorer, out / "a") == {"size_score": 14.0}
    assert len(json.loads(log.read_text())) == 2
    assert collect_results(matrix, out)[0]["size_score"] == 14.0


def test_scorer_without_checkpoint_is_an_error(experiment, write_matrix, tmp_path, scorer_module):
    matrix = load_matrix(
        write_matrix(
            {
                "base": "../experiments/tiny.yaml",
                "design": [{"name": "a"}],
                "scorer": {"callable": f"{scorer_module}.checkpoint_size", "args": {"log": "x"}},
            }
        )
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no last.ckpt"):
        score_row(matrix.scorer, tmp_path / "empty")


@pytest.mark.parametrize(
    ("scorer", "message"),
    [
        (
            {"callable": "no_such_module_xyz.score"},
            "scorer.callable: cannot import 'no_such_module_xyz.score'",
        ),
        ({"callable": "score"}, "scorer.callable: expected a dotted path"),
        (
            {"callable": "dimlab.demos.digits.DEFAULT_CONFIG"},
            "scorer.callable: 'dimlab.demos.digits.DEFAULT_CONFIG' is not callable",
        ),
        ({"callable": "dimlab.demos.digits.score_checkpoint", "kwargs": {}}, "scorer.kwargs: unknown key"),
    ],
)
def test_invalid_scorer_is_rejected(experiment, write_matrix, scorer, message):
    path = write_matrix({"base": "../experiments/tiny.yaml", "design": [{"name": "a"}], "scorer": scorer})
    with pytest.raises(MatrixError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_matrix(path)
