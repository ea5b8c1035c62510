"""wandb runs (opt-in): offline runs land under the job's results folder, never at the repository
root, and an evaluation's figures reach its run's summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctsft.tracking import log_evaluation, start_run

REPO = Path(__file__).resolve().parents[1]


def test_disabled_wandb_starts_nothing(tmp_path: Path) -> None:
    assert start_run({"mode": "disabled"}, {}, tmp_path / "w") is None
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_offline_evaluation_run_lands_under_the_results_folder_with_its_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a stray ./wandb would appear here
    monkeypatch.delenv("WANDB_MODE", raising=False)
    folder = tmp_path / "results" / "nusax" / "seed0"
    cfg = {"mode": "offline", "project": "ctsft", "group": "nusax", "job_type": "evaluate"}
    metrics = {"task": "nusax", "method": "ctsft", "accuracy": 0.625, "macro_f1": 0.5}
    log_evaluation(cfg, metrics, folder)
    runs = list((folder / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    assert b"macro_f1" in runs[0].read_bytes() and b"accuracy" in runs[0].read_bytes()
    assert not (tmp_path / "wandb").exists() and not (REPO / "wandb").exists()
