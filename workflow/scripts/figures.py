"""Rule `figures`: the paper's figures from every evaluation's metrics.json (see ctsft.report.figures)."""

import logging
import sys

from ctsft.report.figures import FIGURES, build_figures

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive

with open(snakemake.log[0], "w") as log_file:
    sys.stdout = sys.stderr = log_file
    logging.basicConfig(level=logging.INFO, stream=log_file, force=True)
    outputs = {name: getattr(snakemake.output, name) for name in FIGURES}
    claims = dict(snakemake.params.claims)
    for name, path in build_figures(snakemake.input.metrics, outputs, claims).items():
        print(name, path)
