"""Transfer theta_1 to the target language with one method (config/hydra/method/, a registered kind).

    python -m ctsft.steps.transfer method=ctsft target=jav io.proxy_checkpoint=... io.circuit=... io.checkpoint=...

A method that trains nothing (`zero_shot`) has no transfer: the workflow evaluates
io.proxy_checkpoint directly instead.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from ctsft.cli import run_step
from ctsft.config import require
from ctsft.config_files import method_needs_circuit, method_trains
from ctsft.errors import CtsftError
from ctsft.steps.shared.training import run_training

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Train io.proxy_checkpoint on the target train split with cfg.method; write io.checkpoint."""
    method = str(cfg.method.name)
    if not method_trains(cfg.method):
        raise CtsftError(f"method {method} trains nothing: evaluate io.proxy_checkpoint directly")
    proxy_checkpoint, checkpoint = require(cfg, "proxy_checkpoint", "checkpoint")
    needs = method_needs_circuit(cfg.method)
    circuit = require(cfg, "circuit")[0] if needs else cfg.io.get("circuit")
    record = run_training(
        cfg,
        proxy_checkpoint,
        checkpoint,
        cfg.method,
        str(cfg.target),
        circuit_path=circuit,
        store_trained_only=True,  # theta_1 stays whole: the transfer stores what it trained
    )
    log.info(
        "%s checkpoint %s: %d steps, final loss %.4f",
        method,
        checkpoint,
        record["steps"],
        record["final_loss"],
    )
    return record


if __name__ == "__main__":
    raise SystemExit(run_step(run))
