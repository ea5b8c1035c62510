"""Select the circuit (top-k), NearZero and random heads from a score table: the JSON training reads.

python -m ctsft.steps.select_circuit io.scores=<scores.tsv> io.circuit=<circuit.json> cdt.k=0.05
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from ctsft.artifacts import read_scores
from ctsft.circuit.selection import select_heads
from ctsft.cli import run_step
from ctsft.config import coordinates, require, to_dict
from ctsft.io import write_json
from ctsft.provenance import provenance, sha256_file

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    scores_path, circuit_path = require(cfg, "scores", "circuit")
    table = read_scores(scores_path)
    picked = select_heads(table, cfg.cdt.k, int(cfg.cdt.seed))
    kinds = sorted(set(table["score_kind"]))
    circuit = {
        "model": str(cfg.model.name),
        "task": str(cfg.task.name),
        "proxy": str(cfg.proxy),
        "k": picked["k"],
        "n_heads_total": picked["n_heads_total"],
        "score_kind": ",".join(kinds),
        "circuit": picked["circuit"],
        "near_zero": picked["near_zero"],
        "random": picked["random"],
        "scores_sha256": sha256_file(scores_path),
        "provenance": provenance(
            grid=coordinates(cfg, pair=False),
            step="select_circuit",
            k_config=cfg.cdt.k,
            seed=int(cfg.cdt.seed),
            config=to_dict(cfg),
        ),
    }
    write_json(circuit_path, circuit)
    log.info("circuit of %d/%d heads -> %s", picked["k"], picked["n_heads_total"], circuit_path)
    return circuit


if __name__ == "__main__":
    raise SystemExit(run_step(run))
