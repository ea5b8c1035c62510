"""Figures (accuracy vs. % parameters, forgetting, editing vs. preserving) from metrics files.

python -m ctsft.steps.figures --out results/quick/figures results/quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctsft.errors import CtsftError
from ctsft.report.figures import FIGURES, build_figures
from ctsft.steps.tables import metrics_paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ctsft.steps.figures", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", required=True, help="folder for the PNG figures")
    parser.add_argument("metrics", nargs="+", help="metrics.json files or folders holding them")
    args = parser.parse_args(argv)
    try:
        paths = metrics_paths(args.metrics)
        if not paths:
            raise CtsftError("no metrics.json found: pass evaluation outputs or a results folder")
        outputs = {name: Path(args.out) / f"{name}.png" for name in FIGURES}
        for name, path in build_figures(paths, outputs).items():
            print(f"{name}: {path}")
    except CtsftError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
