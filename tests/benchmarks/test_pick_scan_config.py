"""benchmarks/pick_scan_config.py: the geometric-mean choice of a launch configuration."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import pick_scan_config  # noqa: E402


def _record(config, case, fwd, fwdbwd, status="ok"):
    return {
        "backend": "triton",
        "config": config,
        "case": case,
        "fwd_ms": fwd,
        "fwdbwd_ms": fwdbwd,
        "status": status,
    }


RESULTS = [
    _record("default", "h2_train", 1.0, 6.0),
    _record("default", "h2_1024_cfg", 1.0, 4.0),
    _record("prefetch=4", "h2_train", 9.0, 3.0),  # training counts fwd+bwd: 2x faster
    _record("prefetch=4", "h2_1024_cfg", 2.0, 1.0),  # sampling counts the forward: 2x slower
    _record("t_sub=4", "h2_train", 1.0, 2.0),
    _record("t_sub=4", "h2_1024_cfg", 1.0, 4.0),
    _record("bwd_lanes=2", "h2_train", 0.1, 0.1),
    _record("bwd_lanes=2", "h2_1024_cfg", 0.1, 0.1, status="oom"),  # fastest, but failed a case
    {"backend": "cuda", "config": "-", "case": "h2_train", "fwd_ms": 0.01, "fwdbwd_ms": 0.01, "status": "ok"},
]


def test_scores_are_geometric_means_of_the_metric_each_case_uses():
    scores = pick_scan_config.score_configs(RESULTS)
    assert scores == pytest.approx({"default": 1.0, "prefetch=4": 1.0, "t_sub=4": 3**-0.5})


def test_the_winner_is_printed_and_written(tmp_path, capsys):
    path = tmp_path / "scan.json"
    path.write_text(json.dumps({"results": RESULTS}))
    assert pick_scan_config.main([str(path), "--write", str(tmp_path / "pick.txt")]) == 0
    assert capsys.readouterr().out.strip() == "t_sub=4"
    assert (tmp_path / "pick.txt").read_text() == "t_sub=4\n"


def test_results_without_a_finished_default_are_refused(tmp_path, capsys):
    path = tmp_path / "scan.json"
    path.write_text(json.dumps({"results": RESULTS[2:4]}))
    assert pick_scan_config.main([str(path)]) == 1
    assert "no finished 'default' configuration" in capsys.readouterr().err
