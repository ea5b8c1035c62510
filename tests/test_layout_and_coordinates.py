"""One function builds every path; records name their own grid coordinates, and the tables read
those, not the path (a layout change cannot move a run to another row)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ctsft import layout
from ctsft.config import compose, coordinates
from ctsft.report.records import read_records
from ctsft.report.tables import build_tables


def test_path_fills_what_it_is_given_and_leaves_wildcards() -> None:
    pattern = layout.path("metrics", R="res")
    assert pattern == "res/{task}/{model}/{proxy}-{target}/{variant}/seed{seed}/metrics.json"
    concrete = layout.path(
        "metrics", R="res", task="nusax", model="m", proxy="ind", target="jav",
        variant=layout.variant_name("ctsft", "0.05"), seed=3,
    )  # fmt: skip
    assert concrete == "res/nusax/m/ind-jav/ctsft/k0.05/seed3/metrics.json"
    assert layout.path("circuit", R="r", k=7) == "r/{task}/{model}/{proxy}/k7/circuit.json"
    assert layout.path("model_dir", M="models", model="e5_small") == "models/e5_small"
    with pytest.raises(KeyError, match="unknown artifact 'metric'"):
        layout.path("metric")


def test_coordinates_come_from_the_grid_overrides() -> None:
    cfg = compose(
        ["method=ctsft", "target=sun", "seed=2", "grid.variant=ctsft_lr", "grid.k='0.05'"]
    )
    assert coordinates(cfg) == {
        "task": "nusax", "model": "e5_small", "proxy": "ind", "target": "sun",
        "variant": "ctsft_lr", "k": "0.05", "seed": 2,
    }  # fmt: skip
    by_hand = coordinates(compose(["method=near_zero"]))
    assert by_hand["variant"] == "near_zero" and by_hand["k"] is None
    proxy_level = coordinates(compose(["grid.k='7'"]), pair=False)
    assert proxy_level["target"] is None and proxy_level["variant"] is None
    assert proxy_level["k"] == "7"


def _metrics(path: Path, grid: dict, accuracy: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "grid": grid,
                "method": "ctsft",  # what was trained; the variant is the table row
                "accuracy": accuracy,
                "macro_f1": accuracy,
                "proxy_accuracy": 0.8,
                "baseline_proxy_accuracy": 0.8,
                "forgetting": 0.0,
                "params_updated_pct": 0.5,
            }
        )
    )
    return path


def test_the_record_places_the_run_whatever_its_path(tmp_path: Path) -> None:
    grid = {"task": "nusax", "model": "hub:org/name", "proxy": "ind", "k": "0.05", "seed": 0}
    paths = [
        # a path that says another task, pair, variant and seed: the record wins
        _metrics(
            tmp_path / "xnli/x/en-de/full_ft/seed9/metrics.json",
            {**grid, "target": "jav", "variant": "ctsft_lr"},
            0.6,
        ),
        _metrics(
            tmp_path / "anywhere/else/metrics.json",
            {**grid, "target": "sun", "variant": "ctsft_lr"},
            0.7,
        ),
    ]
    records = read_records(paths)
    assert list(records.task) == ["nusax", "nusax"]
    assert list(records.target) == ["jav", "sun"]
    assert list(records.method) == ["ctsft_lr", "ctsft_lr"]
    assert list(records.seed) == [0, 0] and list(records.k) == ["0.05", "0.05"]
    assert set(records.model) == {"hub:org/name"}
    written = build_tables(paths, tmp_path / "tables", tasks=["nusax"])
    assert set(written) == {"table1_nusax", "table3_forgetting"}
    rows = (tmp_path / "tables" / "table1_nusax.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:4] for r in rows] == [
        ["nusax", "ind", "jav", "ctsft_lr"],
        ["nusax", "ind", "sun", "ctsft_lr"],
    ]


def test_the_workflow_names_its_paths_only_through_the_layout() -> None:
    """No rule file spells an artifact's path: outputs are at(<artifact>), inputs rules.X.output."""
    rules = Path(__file__).resolve().parents[1] / "workflow" / "rules"
    pattern = re.compile(r"\"[^\"]*/[^\"]*\{[^\"]*\"|\"[^\"]*\{[^\"]*/[^\"]*\"")  # "a/{b}"
    spelled = [
        f"{f.name}: {line.strip()}"
        for f in sorted(rules.glob("*.smk"))
        for line in f.read_text().splitlines()
        if pattern.search(line) and not line.lstrip().startswith("#")
    ]
    assert spelled == []


def test_an_experiment_overrides_the_global_hydra_overrides() -> None:
    import yaml

    from ctsft.workflow_config import REPO_ROOT, step_overrides

    config = yaml.safe_load((REPO_ROOT / "config" / "quick.yaml").read_text())
    nusax = step_overrides(config, "finetune", ("nusax", "ind"))
    xnli = step_overrides(config, "finetune", ("xnli", "en"))
    common = ["model.freeze_embeddings=true", "train=quick", "task.train_size=240"]
    assert nusax == common
    # the last value of a key is the one Hydra keeps
    assert xnli == [*common, "task.train_size=720"]
    assert step_overrides(config, "mean_baseline", ("nusax", "ind"))[-1] == "cdt.n_per_label=8"
    assert step_overrides(config, "mean_baseline", ("xnli", "en"))[-1] == "cdt.pool_size=480"
    assert step_overrides(config, "prepare_model") == common[:2]
