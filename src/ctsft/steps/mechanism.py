"""Do mechanisms transfer? Score the heads again on the target language and compare with the proxy.

For one (task, proxy, target) pair, CT-SFT variant and seed, every head is scored on a discovery
set drawn from the *target* training split by the proxy's rules (cdt.n_per_label, correct_only by
theta_1's predictions, the proxy seed), each model with its own mean baseline on that set:
(a) theta_1 (before transfer) and (b) the CT-SFT model (after). Each is compared with the proxy's
scores: overlap of its top-k heads with the proxy circuit (count, Jaccard, hypergeometric p
against chance; `ctsft.report.mechanism`) and Spearman's rho of all head scores.

All compared vectors are of one kind, `cdt.score`: the proxy's come from scores.tsv when it holds
that kind, else theta_1 re-scores its own discovery set (then the target top-k sets are also
compared with the proxy top-k of that kind, next to the circuit, which keeps its own kind).

    python -m ctsft.steps.mechanism target=jav io.proxy_checkpoint=<theta_1> io.mu=<mu> \
        io.scores=<scores.tsv> io.circuit=<circuit.json> io.checkpoint=<ctsft checkpoint> \
        ++io.mechanism=<mechanism.json> ++io.mechanism_scores=<mechanism_scores.tsv> \
        [cdt.score=attribution]
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import torch
from omegaconf import DictConfig

from ctsft.artifacts import read_circuit, read_mu, read_scores
from ctsft.cdt.baseline import batches, mean_baseline
from ctsft.cdt.scores import score_heads, scores_matrix, scores_table
from ctsft.circuit.selection import select_heads
from ctsft.cli import run_step
from ctsft.config import coordinates, require, to_dict
from ctsft.data import data_checksum
from ctsft.io import atomic_path, write_json
from ctsft.provenance import provenance, sha256_file
from ctsft.report.mechanism import compare
from ctsft.runtime import oom_hint
from ctsft.steps.shared.discovery import (
    CDT_MEMORY_KEYS,
    cdt_engine,
    cdt_options,
    discovery_set,
    load_proxy_model,
    model_record,
)

log = logging.getLogger(__name__)
#: Discovery-set rules the target set must share with the proxy's (mu's record says them).
RULES = ("n_per_label", "correct_only", "seed", "pooling")


def proxy_rules(meta: dict[str, Any]) -> dict[str, Any]:
    """The proxy discovery set's rules, as mean_baseline recorded them in mu's sidecar."""
    disc = meta.get("discovery", {})
    return {
        "n_per_label": disc.get("n_per_label"),
        "correct_only": disc.get("correct_only"),
        "seed": meta.get("seed"),
        "pooling": meta.get("pooling"),
    }


def target_rules(cfg: DictConfig) -> dict[str, Any]:
    c = cfg.cdt
    return {
        "n_per_label": int(c.n_per_label),
        "correct_only": bool(c.correct_only),
        "seed": int(c.seed),
        "pooling": str(c.pooling),
    }


def score(
    cfg: DictConfig, engine: Any, model: Any, examples: list[dict], mu: torch.Tensor
) -> tuple[Any, int]:
    """`cdt.score` of every head of `model` (its `engine`) on `examples` against `mu`
    (`[layer, head]`, count)."""
    data = list(batches(model, examples, int(cfg.cdt.batch_size)))
    with oom_hint(*CDT_MEMORY_KEYS):
        return score_heads(engine, data, mu, str(cfg.cdt.score), int(cfg.cdt.head_batch))


def target_mu(cfg: DictConfig, model: Any, examples: list[dict]) -> torch.Tensor:
    """The label-balanced mean baseline of `model` on the target discovery set."""
    with oom_hint("cdt.batch_size"):
        return mean_baseline(model, examples, str(cfg.cdt.pooling), int(cfg.cdt.batch_size))


def top_k(scores: torch.Tensor, k: int, seed: int) -> list[list[int]]:
    """The k highest-scoring heads, ties by (layer, head), as select_circuit picks the circuit."""
    return select_heads(scores_table(scores, 0, "mechanism"), k, seed)["circuit"]


def run(cfg: DictConfig) -> dict:
    proxy_ckpt, mu_path, scores_path, circuit_path, ctsft_ckpt, out_path, tsv_path = require(
        cfg, "proxy_checkpoint", "mu", "scores", "circuit", "checkpoint", "mechanism",
        "mechanism_scores",
    )  # fmt: skip
    kind, seed, target = str(cfg.cdt.score), int(cfg.cdt.seed), str(cfg.target)
    theta1 = load_proxy_model(cfg, proxy_ckpt)
    geo = theta1.adapter.geometry
    mu, meta = read_mu(mu_path, geo)
    table = read_scores(scores_path, geo)
    circuit = read_circuit(circuit_path, geo)
    k, n_heads = int(circuit["k"]), geo.n_layers * geo.n_heads
    rules = {"proxy": proxy_rules(meta), "target": target_rules(cfg)}
    differ = [r for r in RULES if rules["proxy"][r] not in (None, rules["target"][r])]
    if differ:
        log.warning("target discovery rules differ from the proxy's in %s: %s", differ, rules)

    examples, target_info = discovery_set(cfg, theta1, lang=target)
    # every mu before the model's engine: for cdt.precision=bf16 the engine casts the model
    mu_a = target_mu(cfg, theta1, examples)
    engine = cdt_engine(cfg, theta1)
    tsv_kind = ",".join(sorted(set(table["score_kind"])))
    source = "scores.tsv" if tsv_kind == kind else "rescored"
    if source == "scores.tsv":
        proxy_scores, n_proxy = scores_matrix(table), int(table["n_examples"].iloc[0])
    else:  # theta_1 on its own (recorded) discovery set, in this step's kind
        proxy_examples, _ = discovery_set(cfg, theta1, meta)
        proxy_scores, n_proxy = score(cfg, engine, theta1, proxy_examples, mu)
    theta1_scores, n_a = score(cfg, engine, theta1, examples, mu_a)
    del theta1, engine
    gc.collect()  # one model at a time on the device

    ctsft = load_proxy_model(cfg, ctsft_ckpt)
    mu_b = target_mu(cfg, ctsft, examples)
    ctsft_scores, n_b = score(cfg, cdt_engine(cfg, ctsft), ctsft, examples, mu_b)
    del ctsft

    references = {"circuit": circuit["circuit"]}
    if str(circuit.get("score_kind")) != kind:
        references["proxy_top_k"] = top_k(proxy_scores, k, seed)
    reference = proxy_scores.numpy()
    comparisons = {
        name: compare(reference, s.numpy(), top_k(s, k, seed), references, n)
        for name, s, n in (("theta1_target", theta1_scores, n_a), ("ctsft_target", ctsft_scores, n_b))
    }  # fmt: skip
    heads = table[["layer", "head"]].sort_values(["layer", "head"]).reset_index(drop=True)
    chosen = {tuple(h) for h in circuit["circuit"]}
    in_circuit = [(int(a), int(b)) in chosen for a, b in zip(heads["layer"], heads["head"], strict=True)]  # fmt: skip
    per_head = heads.assign(
        proxy=proxy_scores.flatten().tolist(),
        theta1_target=theta1_scores.flatten().tolist(),
        ctsft_target=ctsft_scores.flatten().tolist(),
        in_circuit=in_circuit,
        score_kind=kind,
    )
    with atomic_path(tsv_path) as tmp:
        per_head.to_csv(tmp, sep="\t", index=False, float_format="%.9g")

    grid = coordinates(cfg)
    record = {
        "grid": grid,
        "task": str(cfg.task.name),
        "model": str(cfg.model.name),
        "proxy": str(cfg.proxy),
        "target": target,
        "seed": int(cfg.seed),
        "k": k,
        "n_heads_total": n_heads,
        "score_kind": kind,
        "circuit_score_kind": str(circuit.get("score_kind")),
        "proxy_scores_source": source,
        "discovery": {
            "rules": rules,
            "rules_differ": differ,
            "n_proxy": n_proxy,
            "target": target_info,
        },
        "comparisons": comparisons,
        "provenance": provenance(
            grid=grid,
            step="mechanism",
            proxy_checkpoint=model_record(proxy_ckpt),
            ctsft_checkpoint=model_record(ctsft_ckpt),
            mu_sha256=sha256_file(mu_path),
            scores_sha256=sha256_file(scores_path),
            circuit_sha256=sha256_file(circuit_path),
            data_checksum=data_checksum(
                cfg.task.name, sorted({str(cfg.proxy), target}), cfg.data.get("root")
            ),
            options=dict(cdt_options(cfg).__dict__),
            config=to_dict(cfg),
        ),
    }
    write_json(out_path, record)
    for name, result in comparisons.items():
        ov = result["overlap"]["circuit"]
        log.info(
            "%s vs proxy circuit: %d/%d shared (Jaccard %.3f, p %.3g), Spearman %.3f",
            name, ov["overlap"], k, ov["jaccard"], ov["p_value"], result["spearman"]["rho"],
        )  # fmt: skip
    log.info("mechanism (%s, %d heads) -> %s", kind, n_heads, out_path)
    return record


if __name__ == "__main__":
    raise SystemExit(run_step(run))
