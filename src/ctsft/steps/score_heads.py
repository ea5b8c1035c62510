"""Score every head by CD-T on the discovery set: a tidy TSV and a layer x head heatmap.

    python -m ctsft.steps.score_heads io.proxy_checkpoint=<theta_1> io.mu=<mu> \
        io.scores=<scores.tsv> io.heatmap=<heatmap.png> [cdt.score=directional]
"""

from __future__ import annotations

import logging
import time

from omegaconf import DictConfig

from ctsft.artifacts import read_mu, sidecar, write_scores
from ctsft.cdt.baseline import batches
from ctsft.cdt.scores import score_heads, scores_table
from ctsft.circuit.heatmap import plot_heatmap
from ctsft.circuit.selection import resolve_k, select_heads
from ctsft.cli import run_step
from ctsft.config import coordinates, require
from ctsft.io import write_json
from ctsft.provenance import provenance, sha256_file
from ctsft.runtime import oom_hint
from ctsft.steps.shared.discovery import (
    CDT_MEMORY_KEYS,
    cdt_engine,
    cdt_options,
    discovery_set,
    load_proxy_model,
)

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    checkpoint, mu_path, scores_path, heatmap_path = require(
        cfg, "proxy_checkpoint", "mu", "scores", "heatmap"
    )
    model = load_proxy_model(cfg, checkpoint)
    mu, meta = read_mu(mu_path, model.adapter.geometry)
    examples, _ = discovery_set(cfg, model, meta)
    engine = cdt_engine(cfg, model)
    kind = str(cfg.cdt.score)
    data = list(batches(model, examples, int(cfg.cdt.batch_size)))
    started = time.perf_counter()
    with oom_hint(*CDT_MEMORY_KEYS):
        scores, n = score_heads(engine, data, mu, kind, int(cfg.cdt.head_batch))
    seconds = time.perf_counter() - started
    table = scores_table(scores, n, kind)
    write_scores(scores_path, table)
    k = resolve_k(cfg.cdt.k, len(table))
    top = select_heads(table, k, int(cfg.cdt.seed))["circuit"]
    plot_heatmap(
        scores.numpy(),
        heatmap_path,
        title=f"{cfg.model.name} {cfg.task.name}/{cfg.proxy}: {kind} (boxes: top {k})",
        label=kind,
        highlight=top,
    )
    record = provenance(
        grid=coordinates(cfg, pair=False),
        step="score_heads",
        model=cfg.model.name,
        score_kind=kind,
        n_examples=n,
        seconds=seconds,  # the faithfulness report's time of this score (it reuses the TSV)
        mu_sha256=sha256_file(mu_path),
        options=dict(cdt_options(cfg).__dict__),
    )
    write_json(sidecar(scores_path), record)
    log.info("scored %d heads (%s) on %d examples -> %s", len(table), kind, n, scores_path)
    return record


if __name__ == "__main__":
    raise SystemExit(run_step(run))
