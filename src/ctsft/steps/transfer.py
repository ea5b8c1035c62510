"""Transfer theta_1 to the target language with one method (full_ft, ctsft, near_zero, random_heads, lora).

    python -m ctsft.steps.transfer method=ctsft target=jav io.proxy_checkpoint=... io.circuit=... io.checkpoint=...

`zero_shot` trains nothing: the workflow evaluates io.proxy_checkpoint directly instead.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from ctsft.cli import run_step
from ctsft.config import require
from ctsft.errors import CtsftError
from ctsft.train.methods import HEAD_METHODS
from ctsft.train.run import run_training

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Train io.proxy_checkpoint on the target train split with cfg.method; write io.checkpoint."""
    method = str(cfg.method.name)
    if method == "zero_shot":
        raise CtsftError("method zero_shot trains nothing: evaluate io.proxy_checkpoint directly")
    proxy_checkpoint, checkpoint = require(cfg, "proxy_checkpoint", "checkpoint")
    needs_circuit = method in HEAD_METHODS or (method == "lora" and cfg.method.get("rank") is None)
    circuit = require(cfg, "circuit")[0] if needs_circuit else cfg.io.get("circuit")
    record = run_training(
        cfg, proxy_checkpoint, checkpoint, cfg.method, str(cfg.target), circuit_path=circuit
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
