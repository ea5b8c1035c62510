"""Evaluate a checkpoint: target test accuracy / macro-F1 / confusion, proxy accuracy, forgetting.

    python -m ctsft.steps.evaluate method=ctsft target=jav io.checkpoint=... io.metrics=... \
        [io.baseline_metrics=<metrics.json of the proxy checkpoint>]

forgetting = proxy test accuracy of this checkpoint - `proxy_accuracy` of io.baseline_metrics.
% parameters updated comes from the checkpoint's training record (0 for a method that trains
nothing, such as zero_shot, which evaluates the proxy checkpoint as is), of two denominators: all
weights (`params_updated_pct`) and the weights a method could train, all but a frozen token-embedding
table (`params_updated_pct_trainable`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ctsft.artifacts import read_metrics, read_training_record
from ctsft.cli import run_step
from ctsft.config import coordinates, require, task_spec, to_dict
from ctsft.config_files import method_trains
from ctsft.data import data_checksum, load_split, subsample
from ctsft.errors import CtsftError
from ctsft.evaluate import EVAL_SEED, classification_metrics, forgetting, predict
from ctsft.facts import TASK_MODEL_FILE
from ctsft.io import write_json
from ctsft.models import load_task_model
from ctsft.models.checkpoint import own_weights
from ctsft.provenance import provenance, sha256_file
from ctsft.runtime import oom_hint, runtime_from_cfg
from ctsft.tracking import log_evaluation
from ctsft.train.methods import embedding_parameter_names

log = logging.getLogger(__name__)


def _test_rows(cfg: DictConfig, lang: str) -> list[dict[str, Any]]:
    ds = load_split(task_spec(cfg), lang, "test", root=cfg.data.root)
    n = cfg.task.get("eval_size")
    return subsample(ds, int(n) if n else None, EVAL_SEED).to_list()


def _baseline(path: str | None) -> tuple[float | None, list[int] | None]:
    """theta_1's proxy accuracy and per-row proxy predictions (the "before" of forgetting) from
    its metrics.json; (None, None) without one. Predictions are None in older files."""
    if not path:
        return None, None
    file = Path(path)
    if not file.is_file():
        raise CtsftError(
            f"baseline metrics {file} does not exist: evaluate the proxy checkpoint first"
        )
    metrics = read_metrics(file)
    value = metrics.get("proxy_accuracy")
    if value is None:
        raise CtsftError(
            f"{file} has no proxy_accuracy: it is not a metrics.json of the evaluate step"
        )
    return float(value), metrics.get("proxy_predictions")


def run(cfg: DictConfig) -> dict:
    """Write io.metrics for io.checkpoint."""
    started = time.perf_counter()
    checkpoint, metrics_path = require(cfg, "checkpoint", "metrics")
    spec = task_spec(cfg)
    model = load_task_model(
        checkpoint,
        spec,
        kind=str(cfg.model.kind),
        max_length=int(cfg.train.max_length),
        runtime=runtime_from_cfg(cfg),
        model_name=str(cfg.model.name),
    )
    training = read_training_record(checkpoint)
    if not training:  # a base model folder, or a copy without its record: no method, no % updated
        rerun = "transfer" if method_trains(cfg.method) else "finetune"
        raise CtsftError(f"{checkpoint} has no training record ({TASK_MODEL_FILE}): not a finished checkpoint; rerun the {rerun} (snakemake <its metrics.json> --forcerun {rerun})")  # fmt: skip
    loaded = time.perf_counter()
    batch = int(cfg.train.eval_batch_size)
    target_rows = _test_rows(cfg, str(cfg.target))
    with oom_hint("train.eval_batch_size"):
        target_preds, target_gold = predict(model, target_rows, batch)
        target = classification_metrics(target_gold, target_preds, spec.label_names)
        target_done = time.perf_counter()
        if str(cfg.proxy) == str(cfg.target):
            proxy, proxy_preds, proxy_gold = target, target_preds, target_gold
        else:
            proxy_preds, proxy_gold = predict(model, _test_rows(cfg, str(cfg.proxy)), batch)
            proxy = classification_metrics(proxy_gold, proxy_preds, spec.label_names)
    proxy_done = time.perf_counter()
    method = str(cfg.method.name)
    trained = method_trains(cfg.method)
    total = sum(p.numel() for p in model.hf.parameters())
    # the weights a method could train: all but the token-embedding table model.freeze_embeddings
    # freezes (96M of e5-small's 118M), the denominator that does not flatter a sparse method
    params = dict(model.hf.named_parameters())
    frozen = embedding_parameter_names(model.hf) if cfg.model.get("freeze_embeddings") else []
    trainable_total = total - sum(params[name].numel() for name in frozen)
    updated = int(training.get("trainable", 0)) if trained else 0
    baseline, baseline_predictions = _baseline(cfg.io.get("baseline_metrics"))
    prov = provenance(
        config=to_dict(cfg),
        checkpoint=str(checkpoint),
        checkpoint_sha256=sha256_file(own_weights(checkpoint)),
        base_model_sha256=training.get("base_model_sha256"),
        training_method=training.get("method"),
        training_seed=training.get("seed"),
        data_checksum=data_checksum(
            spec, sorted({str(cfg.target), str(cfg.proxy)}), root=cfg.data.root
        ),
        eval_seed=EVAL_SEED,
    )
    metrics = {
        "grid": coordinates(cfg),
        "task": spec.name,
        "method": method,
        "proxy": str(cfg.proxy),
        "target": str(cfg.target),
        "seed": int(cfg.seed),
        "accuracy": target["accuracy"],
        "macro_f1": target["macro_f1"],
        "confusion": target["confusion"],
        "labels": target["labels"],
        "n_test": target["n"],
        "proxy_accuracy": proxy["accuracy"],
        "proxy_macro_f1": proxy["macro_f1"],
        "n_proxy_test": proxy["n"],
        "baseline_proxy_accuracy": baseline,
        "forgetting": forgetting(proxy["accuracy"], baseline),
        "params_updated": updated,
        "params_total": total,
        "params_updated_pct": 100.0 * updated / total if total else 0.0,
        "params_trainable_total": trainable_total,
        "params_updated_pct_trainable": 100.0 * updated / trainable_total
        if trainable_total
        else 0.0,
        "training_steps": training.get("steps") if trained else 0,
        "timings": {
            "load_s": loaded - started,
            "target_eval_s": target_done - loaded,
            "proxy_eval_s": proxy_done - target_done,
            "total_s": time.perf_counter() - started,
            "finished_at": prov.pop("created"),
        },
        # per-row predictions on the (shared, EVAL_SEED) test rows: the tables' bootstrap
        # intervals and paired tests resample these rows
        "test_ids": [str(row["id"]) for row in target_rows],
        "predictions": target_preds.tolist(),
        "gold": target_gold.tolist(),
        "proxy_predictions": proxy_preds.tolist(),
        "proxy_gold": proxy_gold.tolist(),
        "baseline_proxy_predictions": baseline_predictions,
        "provenance": prov,
    }
    write_json(metrics_path, metrics)
    log_evaluation(
        to_dict(cfg.wandb) if "wandb" in cfg else None, metrics, Path(metrics_path).parent
    )
    log.info(
        "%s %s->%s: accuracy %.4f, macro-F1 %.4f, proxy accuracy %.4f",
        method, cfg.proxy, cfg.target, metrics["accuracy"], metrics["macro_f1"], metrics["proxy_accuracy"],
    )  # fmt: skip
    return metrics


if __name__ == "__main__":
    raise SystemExit(run_step(run))
