"""Post-training metrics for a row: run the matrix's ``scorer`` on the row's ``last.ckpt`` once per checkpoint.

The result is cached in ``<row>/score.json`` together with the checkpoint's path, size and modification time, so
rerunning ``dimlab ablate`` rescored a row only when its checkpoint changed (e.g. after a longer budget).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dimlab.ablation.matrix import Scorer
from dimlab.ablation.runner import find_last_checkpoint
from dimlab.files import atomic_write

SCORE_FILE = "score.json"


def _fingerprint(checkpoint: Path) -> dict[str, Any]:
    stat = checkpoint.stat()
    return {"checkpoint": str(checkpoint), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_score(row_dir: Path) -> dict[str, Any] | None:
    """The cached ``score.json`` of a row (``{"checkpoint", "size", "mtime_ns", "metrics"}``), or None."""
    try:
        score = json.loads((row_dir / SCORE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return score if isinstance(score, dict) else None


def score_row(scorer: Scorer, row_dir: Path) -> dict[str, Any]:
    """Numeric metrics of the row's newest ``last.ckpt`` under ``scorer``; reuses ``score.json`` when current."""
    checkpoint = find_last_checkpoint(row_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{row_dir}: no last.ckpt to score")
    fingerprint = _fingerprint(checkpoint)
    cached = read_score(row_dir)
    if cached is not None and all(cached.get(k) == v for k, v in fingerprint.items()):
        return cached["metrics"]
    result = scorer.resolve()(checkpoint, **scorer.args)
    if not isinstance(result, dict):
        raise TypeError(
            f"scorer {scorer.callable} returned {type(result).__name__}, expected a dict of metrics"
        )
    metrics = {
        k: float(v) for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
    with atomic_write(row_dir / SCORE_FILE, "w") as handle:  # a killed scorer leaves no half-written score
        handle.write(json.dumps({**fingerprint, "metrics": metrics}, indent=2))
    return metrics
