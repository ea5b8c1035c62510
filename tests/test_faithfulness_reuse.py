"""The faithfulness report reuses the TSV's scores when score_heads computed a compared kind on the
same discovery set with the same CD-T options, and computes them afresh otherwise."""

from __future__ import annotations

import json
from pathlib import Path

from ctsft.config import compose


def _discover(tiny_model_dirs: dict, tmp_path: Path, faithfulness_extra: list[str]) -> dict:
    from ctsft.steps import faithfulness, mean_baseline, score_heads, select_circuit

    io = {
        "proxy_checkpoint": tiny_model_dirs["tiny_bert"], "mu": tmp_path / "mu.safetensors",
        "scores": tmp_path / "scores.tsv", "heatmap": tmp_path / "heat.png",
        "circuit": tmp_path / "circuit.json", "faithfulness": tmp_path / "faith.json",
    }  # fmt: skip
    base = ["model=tiny_bert", "cdt.n_per_label=3", "cdt.correct_only=false", "cdt.k=2",
            "cdt.random_sets=1", "task.eval_size=6", "cdt.batch_size=8", "cdt.score=directional"]  # fmt: skip
    base += [f"io.{k}={v}" for k, v in io.items()]
    cfg = compose(base)
    mean_baseline.run(cfg)
    score_heads.run(cfg)
    select_circuit.run(cfg)
    faithfulness.run(compose(base + faithfulness_extra))
    sidecar = json.loads((tmp_path / "scores.tsv.json").read_text())
    return {"report": json.loads(io["faithfulness"].read_text()), "sidecar": sidecar}


def test_directional_scores_come_from_the_tsv(tiny_model_dirs: dict, tmp_path: Path) -> None:
    out = _discover(tiny_model_dirs, tmp_path, [])
    comparison = out["report"]["score_comparison"]
    assert comparison["directional"]["from"] == "scores.tsv"
    assert "from" not in comparison["attribution"]
    # the time shown is the one score_heads measured for the TSV
    assert comparison["directional"]["seconds"] == out["sidecar"]["seconds"] > 0
    tsv = out["report"]["spearman_vs_single_head_ablation"]["tsv_directional"]
    assert comparison["directional"]["spearman_vs_ablation"] == tsv


def test_other_options_score_again(tiny_model_dirs: dict, tmp_path: Path) -> None:
    out = _discover(tiny_model_dirs, tmp_path, ["cdt.bias_eps=0.0"])
    comparison = out["report"]["score_comparison"]
    assert "from" not in comparison["directional"] and "from" not in comparison["attribution"]
    assert out["sidecar"]["options"]["bias_eps"] == 1e-8
