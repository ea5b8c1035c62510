"""What the finetune and transfer steps share: data, starting model, provenance, the loop call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ctsft.artifacts import read_circuit, recorded_base_model
from ctsft.config import task_spec, to_dict
from ctsft.data import data_checksum, load_split, subsample
from ctsft.models import load_task_model
from ctsft.models.task_model import TaskModel
from ctsft.provenance import provenance, sha256_file
from ctsft.runtime import oom_hint, runtime_from_cfg
from ctsft.train.loop import TrainConfig, train_to_checkpoint
from ctsft.train.methods import build_plan


def model_origin(folder: str | Path) -> dict[str, Any]:
    """sha256 of the prepared base model behind `folder` (carried through checkpoints) and of `folder`'s weights."""
    weights = Path(folder) / "model.safetensors"
    own = sha256_file(weights) if weights.is_file() else None
    return {"base_model_sha256": recorded_base_model(folder) or own, "init_sha256": own}


def train_rows(cfg: DictConfig, lang: str, split: str = "train") -> list[dict[str, Any]]:
    """Rows of `split` in `lang`; training pools honour task.train_size (seeded)."""
    ds = load_split(task_spec(cfg), lang, split, root=cfg.data.root)
    if split == "train":
        n = cfg.task.get("train_size")
        ds = subsample(ds, int(n) if n else None, int(cfg.seed))
    return ds.to_list()


def load_start_model(cfg: DictConfig, folder: str) -> TaskModel:
    return load_task_model(
        folder,
        task_spec(cfg),
        kind=str(cfg.model.kind),
        max_length=int(cfg.train.max_length),
        seed=int(cfg.seed),
        runtime=runtime_from_cfg(cfg),
        model_name=str(cfg.model.name),
    )


def run_training(
    cfg: DictConfig,
    init_dir: str,
    checkpoint: str,
    method_cfg: Any,
    lang: str,
    circuit_path: str | None = None,
    progress: bool = True,
    store_trained_only: bool = False,
) -> dict[str, Any]:
    """Train `method_cfg` on `lang`'s train split starting from `init_dir`; write `checkpoint`
    (with `store_trained_only`, only what the method trained, relative to `init_dir`)."""
    model = load_start_model(cfg, init_dir)
    circuit = read_circuit(circuit_path, model.adapter.geometry) if circuit_path else None
    plan = build_plan(
        model.hf,
        model.adapter,
        method_cfg,
        circuit,
        freeze_embeddings=bool(cfg.model.get("freeze_embeddings", False)),
    )
    config = TrainConfig.from_cfg(cfg.train, method_cfg)
    rows = train_rows(cfg, lang)
    valid = train_rows(cfg, lang, "valid") if config.early_stopping else None
    record = provenance(
        config=to_dict(cfg),
        seed=int(cfg.seed),
        language=lang,
        init_dir=str(init_dir),
        circuit=circuit_path,
        circuit_sha256=sha256_file(circuit_path) if circuit_path else None,
        data_checksum=data_checksum(task_spec(cfg), [lang], root=cfg.data.root),
        **model_origin(init_dir),
    )
    wandb_cfg = to_dict(cfg.wandb) if "wandb" in cfg else None
    with oom_hint("train.batch_size (raise train.grad_accum to keep the effective batch)"):
        return train_to_checkpoint(
            model,
            plan,
            config,
            rows,
            checkpoint,
            seed=int(cfg.seed),
            valid_rows=valid,
            record=record,
            log_path=cfg.io.get("log"),
            wandb_cfg=wandb_cfg,
            progress=progress,
            base_dir=init_dir if store_trained_only else None,
        )
