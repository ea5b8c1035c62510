"""workflow/scripts/run_step.py with `params.runs`: one process runs its step once per override
list (the `evaluate` rule scores every method of a pair and seed this way)."""

from __future__ import annotations

import runpy
import sys
import types
from pathlib import Path

from ctsft.errors import CtsftError

REPO = Path(__file__).resolve().parents[1]


def _script(tmp_path: Path, runs: list[list[str]], step: types.ModuleType) -> tuple[int, str]:
    """run_step.py as Snakemake runs it, on a fake step; (rc, log)."""
    sys.modules[f"ctsft.steps.{step.__name__}"] = step
    log = tmp_path / "job.log"
    job = types.SimpleNamespace(
        params=types.SimpleNamespace(step=step.__name__, overrides=["seed=3"], runs=runs),
        input={"ignored": "not an io override when params.runs is given"},
        output={},
        threads=1,
        log=[str(log)],
    )
    script = runpy.run_path(
        str(REPO / "workflow" / "scripts" / "run_step.py"),
        init_globals={"snakemake": job},
        run_name="run_step",
    )
    try:
        return script["main"](), log.read_text()
    finally:
        del sys.modules[f"ctsft.steps.{step.__name__}"]


def test_each_run_gets_its_own_config_in_order(tmp_path: Path) -> None:
    seen: list[tuple[str, str, int, int]] = []
    fake = types.ModuleType("fake_runs")
    fake.run = lambda cfg: seen.append((cfg.method.name, cfg.io.metrics, cfg.seed, cfg.threads))
    runs = [
        ["method=ctsft", f"++io.metrics={tmp_path}/a.json"],
        ["method=near_zero", f"++io.metrics={tmp_path}/b.json"],
    ]
    code, log = _script(tmp_path, runs, fake)
    assert code == 0, log
    assert seen == [
        ("ctsft", f"{tmp_path}/a.json", 3, 1),
        ("near_zero", f"{tmp_path}/b.json", 3, 1),
    ]
    commands = [line for line in log.splitlines() if line.startswith("$ python -m ctsft.steps.fake_runs")]  # fmt: skip
    assert len(commands) == 2 and "method=near_zero" in commands[1]
    assert "ignored" not in log  # the named inputs are not passed when the runs name their io
    assert log.count("ctsft.timing: start-up") == 2


def test_a_failing_run_fails_the_job(tmp_path: Path) -> None:
    done: list[str] = []
    fake = types.ModuleType("fake_failing_runs")

    def run(cfg) -> None:
        if cfg.method.name == "near_zero":
            raise CtsftError("broken checkpoint")
        done.append(cfg.method.name)

    fake.run = run
    runs = [["method=ctsft"], ["method=near_zero"], ["method=full_ft"]]
    code, log = _script(tmp_path, runs, fake)
    assert code == 2 and "error: broken checkpoint" in log
    assert done == ["ctsft"]  # stops at the first failure; Snakemake removes the job's outputs
