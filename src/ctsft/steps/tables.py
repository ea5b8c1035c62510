"""Tables 1-3, and the comparisons, summary and claims tables, from evaluation metrics files (CSV,
Markdown, LaTeX).

    python -m ctsft.steps.tables --out results/quick/tables results/quick/nusax/*/*/*/seed*/metrics.json
    python -m ctsft.steps.tables --configfile config/quick.yaml --out t results/quick

The workflow's `tables` rule calls `ctsft.report.tables.build_tables` directly, with the config's
`compare` and `claims`; this entry point is the same thing by hand (globs over `**/metrics.json`
work too: proxy_eval files are skipped). `compare` and `claims` come from config/config.yaml, then
the `--configfile` given, merged as Snakemake merges a --configfile into the default config.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from ctsft.errors import CtsftError
from ctsft.provenance import REPO_ROOT
from ctsft.report.tables import build_tables

#: The Snakemake config's keys the aggregation steps read.
REPORT_KEYS = ("compare", "claims")
DEFAULT_CONFIG = REPO_ROOT / "config" / "config.yaml"


def metrics_paths(args: list[str]) -> list[Path]:
    """The run metrics among `args` (files or folders searched for metrics.json)."""
    paths: list[Path] = []
    for arg in args:
        p = Path(arg)
        found = sorted(p.rglob("metrics.json")) if p.is_dir() else [p]
        paths += [f for f in found if f.parent.name != "proxy_eval"]
    return paths


def report_settings(configfile: str | Path | None) -> dict[str, dict | None]:
    """`compare` and `claims` of the default Snakemake config (config/config.yaml, where the
    package runs from its repository), updated by those of `configfile`; None where neither
    says."""
    settings: dict[str, dict | None] = dict.fromkeys(REPORT_KEYS)
    layers = [DEFAULT_CONFIG] if DEFAULT_CONFIG.exists() else []
    layers += [Path(configfile)] if configfile else []
    for path in layers:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise CtsftError(f"config file {path} does not exist") from None
        for key in REPORT_KEYS:
            if isinstance(data.get(key), dict):
                settings[key] = {**(settings[key] or {}), **data[key]}
    return settings


def run_aggregation(
    argv: list[str] | None,
    prog: str,
    out_help: str,
    build: Callable[[list[Path], Path, dict], dict],
) -> int:
    """Shared CLI of the aggregation steps: `--out DIR`, `--configfile`, metrics files or folders;
    `build(paths, out, settings)` with settings the config's compare and claims."""
    parser = argparse.ArgumentParser(prog=prog, description=sys.modules["__main__"].__doc__)
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument(
        "--configfile",
        help="a Snakemake config whose compare and claims to use (after config/config.yaml's)",
    )
    parser.add_argument("metrics", nargs="+", help="metrics.json files or folders holding them")
    args = parser.parse_args(argv)
    try:
        paths = metrics_paths(args.metrics)
        if not paths:
            raise CtsftError("no metrics.json found: pass evaluation outputs or a results folder")
        settings = report_settings(args.configfile)
        for name, written in build(paths, Path(args.out), settings).items():
            files = written if isinstance(written, list | tuple) else [written]
            print(f"{name}: {', '.join(str(f) for f in files)}")
    except CtsftError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    def build(paths: list[Path], out: Path, settings: dict) -> dict:
        return build_tables(paths, out, compare=settings["compare"], claims=settings["claims"])

    return run_aggregation(
        argv, "python -m ctsft.steps.tables", "folder for the tables (*.csv, *.md, *.tex)", build
    )


if __name__ == "__main__":
    raise SystemExit(main())
