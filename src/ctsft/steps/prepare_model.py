"""Materialise the configured model as a cached Hugging Face folder.

python -m ctsft.steps.prepare_model model=e5_small io.model_dir=results/models/e5_small
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from ctsft.cli import run_step
from ctsft.config import require
from ctsft.models import get_model_spec, prepare_model

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    (model_dir,) = require(cfg, "model_dir")
    record = prepare_model(
        get_model_spec(str(cfg.model.name), kind=cfg.model.get("kind")), model_dir
    )
    log.info(
        "model %s ready in %s (sha256 %s)",
        cfg.model.name,
        model_dir,
        record.get("converted_sha256"),
    )
    return record


if __name__ == "__main__":
    raise SystemExit(run_step(run))
