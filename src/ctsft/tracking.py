"""Weights & Biases runs, opt-in (`wandb.mode=offline|online`), grouped by table and rule.

Offline runs are written under the results folder of the job (next to its checkpoint or
metrics.json), never at the repository root; upload them later with
`wandb sync <results_dir>/**/wandb/offline-run-*`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# evaluation figures that go to a run's summary (what the tables report)
SUMMARY_KEYS = (
    "accuracy", "macro_f1", "proxy_accuracy", "proxy_macro_f1", "forgetting",
    "params_updated_pct", "n_test",
)  # fmt: skip


def start_run(wandb_cfg: dict[str, Any] | None, config: dict[str, Any], folder: Path) -> Any:
    """A wandb run writing under `folder`, or None when wandb is disabled."""
    mode = (wandb_cfg or {}).get("mode") or "disabled"
    if mode == "disabled":
        return None
    import wandb  # lazy: slow import, optional at run time

    folder.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        mode=mode if mode in ("online", "offline") else "offline",
        project=wandb_cfg.get("project") or "ctsft",
        group=wandb_cfg.get("group"),
        job_type=wandb_cfg.get("job_type"),
        name=wandb_cfg.get("name"),
        config=config,
        dir=str(folder),
    )


def log_evaluation(wandb_cfg: dict[str, Any] | None, metrics: dict[str, Any], folder: Path) -> None:
    """One evaluation's figures as the summary of its own run (grouped like the training runs)."""
    run = start_run(
        wandb_cfg,
        {k: metrics.get(k) for k in ("task", "method", "proxy", "target", "seed")},
        folder,
    )
    if run is None:
        return
    for key in SUMMARY_KEYS:
        if metrics.get(key) is not None:
            run.summary[key] = metrics[key]
    run.finish()
