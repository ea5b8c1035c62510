"""Rule `tables`: Tables 1-3 from every evaluation's metrics.json, and the comparisons, summary
and claims tables of the config's `compare` and `claims` (see ctsft.report.tables)."""

import logging
import sys
from pathlib import Path

from ctsft.report.tables import build_tables

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive

with open(snakemake.log[0], "w") as log_file:
    sys.stdout = sys.stderr = log_file
    logging.basicConfig(level=logging.INFO, stream=log_file, force=True)
    out_dir = Path(snakemake.output.tables[0]).parent
    written = build_tables(
        snakemake.input.metrics,
        out_dir,
        tasks=snakemake.params.tasks,
        compare=dict(snakemake.params.compare),
        claims=dict(snakemake.params.claims),
    )
    for name, files in written.items():
        print(name, *files)
    missing = [p for p in snakemake.output.tables if not Path(p).exists()]
    if missing:
        raise SystemExit(f"error: tables not written: {missing}")
