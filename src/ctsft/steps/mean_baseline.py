"""Label-balanced mean baseline mu of every head on the proxy checkpoint.

python -m ctsft.steps.mean_baseline io.proxy_checkpoint=<theta_1> io.mu=<mu.safetensors>
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from ctsft.artifacts import write_mu
from ctsft.cdt.baseline import mean_baseline
from ctsft.cli import run_step
from ctsft.config import require, to_dict
from ctsft.data import data_checksum
from ctsft.provenance import provenance
from ctsft.runtime import oom_hint
from ctsft.steps.shared.discovery import (
    cdt_precision,
    discovery_set,
    load_proxy_model,
    model_record,
)

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    checkpoint, mu_path = require(cfg, "proxy_checkpoint", "mu")
    model = load_proxy_model(cfg, checkpoint)
    examples, discovery = discovery_set(cfg, model)
    cdt_precision(cfg, model)  # mu in the precision the CD-T steps decompose in
    with oom_hint("cdt.batch_size"):
        mu = mean_baseline(model, examples, str(cfg.cdt.pooling), int(cfg.cdt.batch_size))
    record = provenance(
        step="mean_baseline",
        model=cfg.model.name,
        task=cfg.task.name,
        proxy=cfg.proxy,
        pooling=str(cfg.cdt.pooling),
        shape=list(mu.shape),
        seed=int(cfg.cdt.seed),
        checkpoint=model_record(checkpoint),
        data_checksum=data_checksum(cfg.task.name, [str(cfg.proxy)], cfg.data.get("root")),
        discovery=discovery,
        config=to_dict(cfg),
    )
    write_mu(mu_path, mu, record)
    log.info("mean baseline %s from %d examples -> %s", tuple(mu.shape), len(examples), mu_path)
    return record


if __name__ == "__main__":
    raise SystemExit(run_step(run))
