"""Figures (accuracy vs. % parameters, forgetting, editing vs. preserving) from metrics files.

python -m ctsft.steps.figures --out results/quick/figures [--configfile config/quick.yaml] results/quick

The editing-vs-preserving figure compares the methods of the config's `claims` roles (see
`ctsft.steps.tables.report_settings`).
"""

from __future__ import annotations

from pathlib import Path

from ctsft.report.figures import FIGURES, build_figures
from ctsft.steps.tables import run_aggregation


def main(argv: list[str] | None = None) -> int:
    def build(paths: list[Path], out: Path, settings: dict) -> dict:
        outputs = {name: out / f"{name}.png" for name in FIGURES}
        return build_figures(paths, outputs, claims=settings["claims"])

    return run_aggregation(
        argv, "python -m ctsft.steps.figures", "folder for the PNG figures", build
    )


if __name__ == "__main__":
    raise SystemExit(main())
