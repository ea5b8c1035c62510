"""Shared plumbing of the discovery steps: load theta_1, the conventions, the discovery set."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ctsft.cdt.baseline import discovery_indices
from ctsft.cdt.rules import CDTOptions
from ctsft.config import task_spec
from ctsft.data import load_split
from ctsft.errors import CtsftError
from ctsft.io import read_json
from ctsft.models import load_task_model
from ctsft.provenance import sha256_file

log = logging.getLogger(__name__)


def cdt_options(cfg: DictConfig) -> CDTOptions:
    c = cfg.cdt
    return CDTOptions(
        convention=str(c.convention),
        frozen_attention=bool(c.frozen_attention),
        normalize_rel_irrel=bool(c.normalize_rel_irrel),
        bias_eps=float(c.bias_eps),
        compile=bool(c.compile),
    )


def load_proxy_model(cfg: DictConfig, checkpoint: str) -> Any:
    """theta_1 as a TaskModel (eval mode, eager attention)."""
    max_length = int(cfg.train.max_length) if "train" in cfg and "max_length" in cfg.train else 128
    model = load_task_model(
        checkpoint, task_spec(cfg), kind=cfg.model.get("kind"), max_length=max_length
    )
    return model.eval()


def model_record(checkpoint: str) -> dict[str, Any]:
    """sha256 of the checkpoint's weights and its own provenance record (if any)."""
    folder = Path(checkpoint)
    record: dict[str, Any] = {"path": str(folder)}
    weights = folder / "model.safetensors"
    if weights.is_file():
        record["model_sha256"] = sha256_file(weights)
    prov = folder / "provenance.json"
    if prov.is_file():
        record["checkpoint_provenance"] = read_json(prov)
    return record


def proxy_pool(cfg: DictConfig, split: str) -> Any:
    return load_split(task_spec(cfg), str(cfg.proxy), split, root=cfg.data.get("root"))


def discovery_set(
    cfg: DictConfig, model: Any, meta: dict[str, Any] | None = None
) -> tuple[list[dict], dict]:
    """The discovery examples: the ones recorded in mu's sidecar when given, else drawn afresh."""
    pool = proxy_pool(cfg, "train")
    if meta and "discovery" in meta:
        disc = meta["discovery"]
        idx = [int(i) for i in disc["indices"]]
        ids = [pool[i]["id"] for i in idx]
        if ids != disc["ids"]:
            raise CtsftError(
                "the proxy training data changed since the mean baseline was computed: rerun it"
            )
        return [pool[i] for i in idx], disc
    c = cfg.cdt
    idx, info = discovery_indices(
        model, pool, int(c.n_per_label), int(c.seed), bool(c.correct_only), int(c.batch_size)
    )
    info.update(
        indices=idx, ids=[pool[i]["id"] for i in idx], labels=[int(pool[i]["label"]) for i in idx]
    )
    log.info("discovery set: %d examples (%s per label)", len(idx), info["n_per_label_used"])
    return [pool[i] for i in idx], info
