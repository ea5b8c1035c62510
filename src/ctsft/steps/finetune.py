"""Proxy competence tuning: full fine-tuning of the base model on the proxy language (theta_1).

    python -m ctsft.steps.finetune model=e5_small proxy=ind io.model_dir=... io.checkpoint=...

Always `full_ft`, whatever `method` says: this step makes the starting point of every method.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from ctsft.cli import run_step
from ctsft.config import require
from ctsft.config_files import method_config
from ctsft.steps.shared.training import run_training

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Train io.model_dir on the proxy train split with full_ft; write io.checkpoint."""
    model_dir, checkpoint = require(cfg, "model_dir", "checkpoint")
    method = OmegaConf.create(method_config("full_ft"))
    record = run_training(cfg, model_dir, checkpoint, method, str(cfg.proxy))
    log.info(
        "proxy checkpoint %s: %d steps, final loss %.4f",
        checkpoint,
        record["steps"],
        record["final_loss"],
    )
    return record


if __name__ == "__main__":
    raise SystemExit(run_step(run))
