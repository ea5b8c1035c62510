"""Rule `mechanism_report`: the mechanism_transfer table and figure from every mechanism record
(see ctsft.report.tables.build_mechanism_table and ctsft.report.figures.mechanism_figure)."""

import logging
import sys
from pathlib import Path

from ctsft.report.figures import mechanism_figure
from ctsft.report.tables import build_mechanism_table

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive

with open(snakemake.log[0], "w") as log_file:
    sys.stdout = sys.stderr = log_file
    logging.basicConfig(level=logging.INFO, stream=log_file, force=True)
    records, scores = list(snakemake.input.records), list(snakemake.input.scores)
    out_dir = Path(snakemake.output.tables[0]).parent
    print(*build_mechanism_table(records, out_dir))
    print(mechanism_figure(records, scores, snakemake.output.figure))
    missing = [p for p in snakemake.output.tables if not Path(p).exists()]
    if missing:
        raise SystemExit(f"error: tables not written: {missing}")
