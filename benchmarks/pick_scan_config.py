"""Pick the fastest Triton scan launch configuration from a ``bench_scan.py --configs`` run.

Each configuration is scored by the geometric mean, over the cases every configuration finished, of its time
relative to the default's: fwd+bwd for the training cases (``*_train``), the forward alone for the sampling cases
(``*_cfg``, which never run a backward). A configuration that failed or ran out of memory on any case is not
eligible. Prints the per-configuration scores and, on the last line, the winner in ``DIMLAB_SCAN_CONFIG`` syntax
(empty for the defaults), so a shell can do ``export DIMLAB_SCAN_CONFIG=$(... | tail -1)``.

Usage:
    python benchmarks/pick_scan_config.py scan.json
    python benchmarks/pick_scan_config.py scan.json --write picked.txt
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def case_metric(case: str) -> str:
    """The time that matters for a bench_scan case: fwd+bwd when it trains, the forward when it samples."""
    return "fwd_ms" if case.endswith("_cfg") else "fwdbwd_ms"


def score_configs(results: list[dict]) -> dict[str, float]:
    """config name -> geometric-mean time relative to the 'default' configuration (lower is better)."""
    times: dict[str, dict[str, float]] = {}
    failed: set[str] = set()
    for record in results:
        if record.get("backend") != "triton":
            continue
        name = record["config"]
        value = record.get(case_metric(record["case"]))
        if record.get("status") != "ok" or not value:
            failed.add(name)
            continue
        times.setdefault(name, {})[record["case"]] = float(value)
    if "default" not in times or "default" in failed:
        raise ValueError("the results hold no finished 'default' configuration to compare against")
    eligible = [name for name in times if name not in failed]
    cases = set.intersection(*(set(times[name]) for name in eligible)) if eligible else set()
    if not cases:
        raise ValueError("no case was finished by every configuration")
    base = times["default"]
    return {
        name: math.exp(sum(math.log(t[c] / base[c]) for c in cases) / len(cases))
        for name, t in times.items()
        if name in eligible
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="bench_scan.py JSON output")
    parser.add_argument("--write", type=Path, help="also write the winner's DIMLAB_SCAN_CONFIG text here")
    args = parser.parse_args(argv)
    try:
        results = json.loads(args.results.read_text())["results"]
        scores = score_configs(results)
    except (OSError, KeyError, ValueError) as err:
        print(f"pick_scan_config: {args.results}: {err}", file=sys.stderr)
        return 1
    for name, score in sorted(scores.items(), key=lambda item: item[1]):
        print(f"{score:7.3f}  {name}", file=sys.stderr)
    best = min(scores, key=scores.get)
    text = "" if best == "default" else best
    if args.write:
        args.write.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
