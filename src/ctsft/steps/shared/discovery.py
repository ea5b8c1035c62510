"""Shared plumbing of the discovery steps: load theta_1, the conventions, the discovery set."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ctsft.artifacts import read_model_provenance
from ctsft.cdt.baseline import discovery_indices
from ctsft.cdt.engine import CDTEngine
from ctsft.cdt.rules import CDTOptions
from ctsft.config import task_spec
from ctsft.data import load_split
from ctsft.errors import CtsftError
from ctsft.models import load_task_model
from ctsft.models.checkpoint import own_weights
from ctsft.provenance import sha256_file
from ctsft.runtime import PRECISIONS, runtime_from_cfg, set_tf32

CDT_PRECISIONS = ("fp32", "bf16")

log = logging.getLogger(__name__)


def cdt_options(cfg: DictConfig) -> CDTOptions:
    c = cfg.cdt
    return CDTOptions(
        convention=str(c.convention),
        frozen_attention=bool(c.frozen_attention),
        normalize_rel_irrel=bool(c.normalize_rel_irrel),
        bias_eps=float(c.bias_eps),
        compile=bool(c.compile),
        path=str(c.path),
    )


def load_proxy_model(cfg: DictConfig, checkpoint: str) -> Any:
    """theta_1 as a TaskModel in eval mode, on the runtime's device."""
    max_length = int(cfg.train.max_length) if "train" in cfg and "max_length" in cfg.train else 128
    model = load_task_model(
        checkpoint,
        task_spec(cfg),
        kind=cfg.model.get("kind"),
        max_length=max_length,
        runtime=runtime_from_cfg(cfg),
        model_name=str(cfg.model.name),
    )
    return model.eval()


def cdt_precision(cfg: DictConfig, model: Any) -> Any:
    """`model` in `cdt.precision` (cast for bf16), TF32 per `cdt.tf32`: the precision of every
    CD-T forward, the mean baseline's included (a mu taken under the runtime's bf16 autocast
    would give every source of an fp32 decomposition a rounding offset beta != 0)."""
    precision = str(cfg.cdt.get("precision", "fp32"))
    if precision not in CDT_PRECISIONS:
        raise CtsftError(
            f"cdt.precision must be one of {', '.join(CDT_PRECISIONS)}, got {precision!r}"
        )
    set_tf32(bool(cfg.cdt.get("tf32", False)))
    if precision != "fp32":
        model.hf.to(PRECISIONS[precision])
    return model


def cdt_engine(cfg: DictConfig, model: Any) -> CDTEngine:
    """The CD-T engine of `model` in `cdt.precision`. fp32 without TF32 keeps beta + gamma equal
    to the logits to ~1e-5."""
    return CDTEngine.from_task_model(cdt_precision(cfg, model), cdt_options(cfg))


# what each CD-T step may run out of memory on, for the one-line message
CDT_MEMORY_KEYS = ("cdt.head_batch", "cdt.batch_size")


def model_record(checkpoint: str) -> dict[str, Any]:
    """sha256 of the checkpoint's weights and its own provenance record (if any)."""
    folder = Path(checkpoint)
    record: dict[str, Any] = {"path": str(folder)}
    weights = own_weights(folder)
    if weights.is_file():
        record["model_sha256"] = sha256_file(weights)
    prov = read_model_provenance(folder)
    if prov is not None:
        record["checkpoint_provenance"] = prov
    return record


def proxy_pool(cfg: DictConfig, split: str, lang: str | None = None) -> Any:
    """`split` of the language `lang` (default: the proxy language)."""
    lang = str(cfg.proxy) if lang is None else lang
    return load_split(task_spec(cfg), lang, split, root=cfg.data.get("root"))


def discovery_set(
    cfg: DictConfig, model: Any, meta: dict[str, Any] | None = None, lang: str | None = None
) -> tuple[list[dict], dict]:
    """The discovery examples of `lang` (default: the proxy language): the ones recorded in mu's
    sidecar when given, else drawn afresh from its training split by the `cdt` rules
    (n_per_label, correct_only by `model`'s predictions, seed)."""
    pool = proxy_pool(cfg, "train", lang)
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
    pool_size = c.get("pool_size")
    idx, info = discovery_indices(
        model,
        pool,
        int(c.n_per_label),
        int(c.seed),
        bool(c.correct_only),
        int(c.batch_size),
        None if pool_size is None else int(pool_size),
    )
    info.update(
        indices=idx, ids=[pool[i]["id"] for i in idx], labels=[int(pool[i]["label"]) for i in idx]
    )
    log.info(
        "discovery set of %s: %d examples (%s per label)",
        lang or cfg.proxy, len(idx), info["n_per_label_used"],
    )  # fmt: skip
    return [pool[i] for i in idx], info
