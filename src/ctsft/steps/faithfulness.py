"""Faithfulness report: mean-ablate the circuit, NearZero and random sets on the proxy test split;
Spearman between the head scores and single-head ablation effects on the discovery set, and
`score_comparison`: Spearman vs ablation and wall time of the attribution and directional CD-T
scores (and the ablation's time), always, whatever score the TSV holds.

    python -m ctsft.steps.faithfulness io.proxy_checkpoint=<theta_1> io.mu=<mu> io.circuit=<json> \
        io.scores=<scores.tsv> io.faithfulness=<report.json> [task.eval_size=120]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import pandas as pd
import torch
from omegaconf import DictConfig

from ctsft.artifacts import read_circuit, read_mu, read_scores, sidecar
from ctsft.cdt.baseline import batches
from ctsft.cdt.scores import score_heads, scores_matrix
from ctsft.circuit.faithfulness import ablation_report, summarize_random
from ctsft.circuit.selection import random_head_sets
from ctsft.cli import run_step
from ctsft.config import coordinates, require, to_dict
from ctsft.data import subsample
from ctsft.io import read_json, write_json
from ctsft.provenance import provenance, sha256_file
from ctsft.report.stats import spearman
from ctsft.runtime import oom_hint
from ctsft.steps.shared.discovery import (
    CDT_MEMORY_KEYS,
    cdt_engine,
    cdt_options,
    discovery_set,
    load_proxy_model,
    proxy_pool,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """`fn()` and its wall time in seconds (the scores come back on the CPU, so GPU work is done)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


#: the head scores compared with single-head ablation in `score_comparison`
COMPARED = ("attribution", "directional")


def tsv_scores(
    cfg: DictConfig, table: pd.DataFrame, scores_path: str, mu_path: str
) -> tuple[str, torch.Tensor, float] | None:
    """(kind, scores, seconds) of the TSV when score_heads computed one of the COMPARED kinds on
    this very discovery set (same mu) with the same CD-T options, so it need not run again; None
    otherwise. `compile` may differ: it fuses the same rules."""
    record_path = sidecar(scores_path)
    if not record_path.is_file():
        return None
    record = read_json(record_path)
    kind = str(table["score_kind"].iloc[0])
    options = {k: v for k, v in cdt_options(cfg).__dict__.items() if k != "compile"}
    recorded = {k: v for k, v in (record.get("options") or {}).items() if k != "compile"}
    if (
        kind not in COMPARED
        or "seconds" not in record
        or record.get("mu_sha256") != sha256_file(mu_path)
        or recorded != options
    ):
        return None
    log.info(
        "%s scores from %s (computed by score_heads in %.1f s)",
        kind,
        scores_path,
        record["seconds"],
    )
    return kind, scores_matrix(table), float(record["seconds"])


def run(cfg: DictConfig) -> dict:
    checkpoint, mu_path, circuit_path, scores_path, out_path = require(
        cfg, "proxy_checkpoint", "mu", "circuit", "scores", "faithfulness"
    )
    model = load_proxy_model(cfg, checkpoint)
    mu, meta = read_mu(mu_path, model.adapter.geometry)
    circuit = read_circuit(circuit_path, model.adapter.geometry)
    table = read_scores(scores_path, model.adapter.geometry)
    engine = cdt_engine(cfg, model)
    geo = engine.geo
    seed = int(cfg.cdt.seed)
    bs = int(cfg.cdt.batch_size)
    eval_size = cfg.task.get("eval_size")
    test = subsample(proxy_pool(cfg, "test"), None if eval_size is None else int(eval_size), seed)
    randoms = random_head_sets(
        geo.n_layers, geo.n_heads, int(circuit["k"]), int(cfg.cdt.random_sets), seed + 1
    )
    sets = [circuit["circuit"], circuit["near_zero"], *randoms]
    with oom_hint(*CDT_MEMORY_KEYS):
        report = ablation_report(engine, list(batches(model, list(test), bs)), mu, sets)
    circuit_res, near_res, random_res = report["sets"][0], report["sets"][1], report["sets"][2:]
    rand = summarize_random(random_res)

    examples, _ = discovery_set(cfg, model, meta)
    data = list(batches(model, examples, bs))
    head_batch = int(cfg.cdt.head_batch)
    seconds: dict[str, float] = {}
    reused = tsv_scores(cfg, table, scores_path, mu_path)
    computed: dict[str, torch.Tensor] = {}
    with oom_hint(*CDT_MEMORY_KEYS):
        (effects, n_disc), seconds["ablation"] = timed(
            lambda: score_heads(engine, data, mu, "ablation", head_batch)
        )
        for kind in COMPARED:
            if reused is not None and reused[0] == kind:
                computed[kind], seconds[kind] = reused[1], reused[2]
                continue
            (computed[kind], _), seconds[kind] = timed(
                lambda kind=kind: score_heads(engine, data, mu, kind, head_batch)
            )
    directional, attribution = computed["directional"], computed["attribution"]
    correlations = {
        "tsv_" + str(table["score_kind"].iloc[0]): spearman(
            scores_matrix(table).numpy(), effects.numpy()
        )
    }
    if table["score_kind"].iloc[0] != "directional":
        correlations["directional"] = spearman(directional.numpy(), effects.numpy())
    # the cheap first-order score next to CD-T, both against single-head ablation, same data
    comparison = {
        kind: {"spearman_vs_ablation": spearman(scores.numpy(), effects.numpy()), "seconds": sec}
        for kind, scores, sec in (
            ("attribution", attribution, seconds["attribution"]),
            ("directional", directional, seconds["directional"]),
        )
    }
    comparison["ablation"] = {"seconds": seconds["ablation"]}
    if reused is not None:
        comparison[reused[0]]["from"] = "scores.tsv"  # its time is the score_heads job's
    result = {
        "model": str(cfg.model.name),
        "task": str(cfg.task.name),
        "proxy": str(cfg.proxy),
        "k": int(circuit["k"]),
        "eval_split": "test",
        "n_eval": report["n_examples"],
        "clean_accuracy": report["clean_accuracy"],
        "clean_margin": report["clean_margin"],
        "circuit": circuit_res,
        "near_zero": near_res,
        "random": random_res,
        "random_summary": rand,
        "circuit_hurts_more_than_median_random": bool(
            rand and circuit_res["margin_drop"] > rand["margin_drop_median"]
        ),
        "spearman_vs_single_head_ablation": correlations,
        "single_head_ablation": {
            "n_examples": n_disc,
            "split": "train (discovery set)",
            "margin_drop": effects.tolist(),
        },
        "score_comparison": {"n_examples": n_disc, **comparison},
        "provenance": provenance(
            grid=coordinates(cfg, pair=False),
            step="faithfulness",
            circuit_sha256=sha256_file(circuit_path),
            scores_sha256=sha256_file(scores_path),
            mu_sha256=sha256_file(mu_path),
            config=to_dict(cfg),
        ),
    }
    write_json(out_path, result)
    log.info(
        "faithfulness: circuit margin drop %.4f, near_zero %.4f, random median %s -> %s",
        circuit_res["margin_drop"],
        near_res["margin_drop"],
        rand.get("margin_drop_median"),
        out_path,
    )
    return result


if __name__ == "__main__":
    raise SystemExit(run_step(run))
