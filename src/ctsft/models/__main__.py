"""`python -m ctsft.models info model=e5_small [io.model_dir=...]`: prepare a model and describe it.

Prints layers, heads, parameter counts by kind, and the provenance record (source, sha256).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import DictConfig

from ctsft.cli import run_step
from ctsft.models import get_model_spec, load_task_model, prepare_model
from ctsft.provenance import REPO_ROOT


def parameter_counts(model) -> dict[str, int]:
    """Parameters split into embeddings, attention projections, norms and the rest."""
    adapter = model.adapter
    attn = {
        id(p)
        for layer in adapter.layers()
        for proj in (layer.attn.q, layer.attn.k, layer.attn.v, layer.attn.o)
        for p in proj.parameters()
    }
    norms = {id(p) for p in adapter.norm_parameters().values()}
    counts = {"total": 0, "embeddings": 0, "attention": 0, "norms": 0, "other": 0}
    for name, param in model.hf.named_parameters():
        n = param.numel()
        counts["total"] += n
        if id(param) in attn:
            counts["attention"] += n
        elif id(param) in norms:
            counts["norms"] += n
        elif "embed" in name:
            counts["embeddings"] += n
        else:
            counts["other"] += n
    return counts


def info(cfg: DictConfig) -> dict:
    folder = Path(cfg.io.model_dir or REPO_ROOT / "results" / "models" / cfg.model.name)
    record = prepare_model(get_model_spec(str(cfg.model.name), kind=cfg.model.get("kind")), folder)
    model = load_task_model(folder, cfg.task.name, kind=cfg.model.kind)
    summary = {
        "model": cfg.model.name,
        "folder": str(folder),
        **model.adapter.describe(),
        "parameters": parameter_counts(model),
        "provenance": {
            k: record.get(k) for k in ("source", "weight_file", "weight_sha256", "converted_sha256")
        },
    }
    print(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "info":
        print(
            "usage: python -m ctsft.models info model=<name> [io.model_dir=<folder>]",
            file=sys.stderr,
        )
        return 2
    return run_step(info, argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
