"""Tables 1-3 from evaluation metrics files (CSV, Markdown, LaTeX).

    python -m ctsft.steps.tables --out results/quick/tables results/quick/nusax/*/*/*/seed*/metrics.json

The workflow's `tables` rule calls `ctsft.report.tables.build_tables` directly; this entry point
is the same thing by hand (globs over `**/metrics.json` work too: proxy_eval files are skipped).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ctsft.errors import CtsftError
from ctsft.report.tables import build_tables


def metrics_paths(args: list[str]) -> list[Path]:
    """The run metrics among `args` (files or folders searched for metrics.json)."""
    paths: list[Path] = []
    for arg in args:
        p = Path(arg)
        found = sorted(p.rglob("metrics.json")) if p.is_dir() else [p]
        paths += [f for f in found if f.parent.name != "proxy_eval"]
    return paths


def run_aggregation(
    argv: list[str] | None, prog: str, out_help: str, build: Callable[[list[Path], Path], dict]
) -> int:
    """Shared CLI of the aggregation steps: `--out DIR` plus metrics files or folders."""
    parser = argparse.ArgumentParser(prog=prog, description=sys.modules["__main__"].__doc__)
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("metrics", nargs="+", help="metrics.json files or folders holding them")
    args = parser.parse_args(argv)
    try:
        paths = metrics_paths(args.metrics)
        if not paths:
            raise CtsftError("no metrics.json found: pass evaluation outputs or a results folder")
        for name, written in build(paths, Path(args.out)).items():
            files = written if isinstance(written, list | tuple) else [written]
            print(f"{name}: {', '.join(str(f) for f in files)}")
    except CtsftError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_aggregation(
        argv, "python -m ctsft.steps.tables", "folder for table*.{csv,md,tex}", build_tables
    )


if __name__ == "__main__":
    raise SystemExit(main())
