"""Where a finished run's time and disk went: job-seconds per rule from the `benchmarks/` TSV every
job writes, the split of the evaluations (start-up, checkpoint loads, target and proxy rows) from
the timings in every metrics.json, and the size of the results folder.

    .venv/bin/python benchmarks/bench_grid.py results/nusax_grid [--wall-s 2950]

`--wall-s` (the measured wall time of the whole run, e.g. from `time make reproduce-grid`) adds
how busy the cores were: job-seconds / (wall x cores). Prints a table per rule and a RESULT line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections import defaultdict
from pathlib import Path


def job_seconds(results: Path) -> dict[str, list[float]]:
    """Wall seconds of every job, by rule (benchmarks/<rule>/**.tsv, Snakemake's `s` column)."""
    out: dict[str, list[float]] = defaultdict(list)
    root = results / "benchmarks"
    for tsv in sorted(root.rglob("*.tsv")):
        rule = tsv.relative_to(root).parts[0]
        with tsv.open() as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows:
            out[rule].append(float(rows[-1]["s"]))
    return dict(out)


def evaluation_split(results: Path) -> dict[str, float]:
    """Summed seconds of every evaluation's load, target rows and proxy rows (metrics.json)."""
    totals: dict[str, float] = defaultdict(float)
    for path in results.rglob("metrics.json"):
        timings = json.loads(path.read_text()).get("timings") or {}
        for key in ("load_s", "target_eval_s", "proxy_eval_s", "total_s"):
            totals[key] += float(timings.get(key) or 0.0)
        totals["runs"] += 1
    return dict(totals)


def folder_bytes(folder: Path) -> int:
    return sum(
        (Path(root) / name).stat().st_size
        for root, _, names in os.walk(folder)
        for name in names
        if not (Path(root) / name).is_symlink()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a run's results_dir")
    parser.add_argument("--wall-s", type=float, help="measured wall time of the run")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args(argv)
    by_rule = job_seconds(args.results)
    if not by_rule:
        raise SystemExit(f"error: no benchmarks/*.tsv under {args.results}: run the workflow first")
    total = sum(sum(v) for v in by_rule.values())
    print(f"{'rule':<16} {'jobs':>5} {'job-s':>8} {'mean s':>7} {'share':>6}")
    for rule, seconds in sorted(by_rule.items(), key=lambda kv: -sum(kv[1])):
        s = sum(seconds)
        print(f"{rule:<16} {len(seconds):>5} {s:>8.0f} {s / len(seconds):>7.1f} {s / total:>6.1%}")
    print(f"{'all':<16} {sum(map(len, by_rule.values())):>5} {total:>8.0f}")
    split = evaluation_split(args.results)
    if split.get("runs"):
        print(
            f"evaluations: {split['runs']:.0f} metrics files; load {split['load_s']:.0f} s, "
            f"target rows {split['target_eval_s']:.0f} s, proxy rows {split['proxy_eval_s']:.0f} s "
            f"(of {split['total_s']:.0f} s inside the step)"
        )
    size = folder_bytes(args.results)
    print(f"disk: {size / 1e9:.2f} GB in {args.results}")
    busy = f" busy={total / (args.wall_s * args.cores):.3f}" if args.wall_s else ""
    print(f"RESULT job_seconds={total:.0f} disk_gb={size / 1e9:.3f}{busy}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
