"""Circuit selection, heatmap, and the four discovery steps end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from ctsft.artifacts import read_mu
from ctsft.cdt import scores_table
from ctsft.circuit.heatmap import plot_heatmap
from ctsft.circuit.selection import resolve_k, select_heads
from ctsft.config import compose
from ctsft.errors import CtsftError

CIRCUIT_KEYS = {
    "model", "task", "proxy", "k", "n_heads_total", "score_kind", "circuit", "near_zero", "random",
    "scores_sha256", "provenance",
}  # fmt: skip


def table() -> pd.DataFrame:
    scores = torch.tensor([[0.5, -0.9, 0.01, 0.2], [-0.002, 0.7, 0.3, -0.05]])
    return scores_table(scores, 10, "directional")


def test_resolve_k() -> None:
    assert resolve_k(3, 144) == 3
    assert resolve_k(0.05, 144) == 7
    assert resolve_k(0.001, 144) == 1
    assert resolve_k(1.0, 8) == 8
    with pytest.raises(CtsftError):
        resolve_k(200, 144)
    with pytest.raises(CtsftError):
        resolve_k(-0.5, 144)


def test_select_heads() -> None:
    df = table()
    assert df.set_index(["layer", "head"]).loc[(1, 1), "rank"] == 1
    picked = select_heads(df, 3, seed=0)
    assert picked["circuit"] == [[1, 1], [0, 0], [1, 2]]  # signed top-k: -0.9 is not in it
    assert picked["near_zero"] == [[1, 0], [0, 2], [1, 3]]
    assert picked["k"] == 3 and picked["n_heads_total"] == 8
    assert picked["random"] == select_heads(df, 3, seed=0)["random"]
    assert len(picked["random"]) == 3 and len({tuple(h) for h in picked["random"]}) == 3
    assert select_heads(df, 0.25, seed=0)["k"] == 2


def test_heatmap_png(tmp_path: Path) -> None:
    out = tmp_path / "heat.png"
    plot_heatmap(torch.randn(3, 5).numpy(), out, title="t", highlight=[[0, 1]])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_qwen2"])
def test_discovery_steps_end_to_end(model: str, tiny_model_dirs: dict, tmp_path: Path) -> None:
    from ctsft.steps import faithfulness, mean_baseline, score_heads, select_circuit

    io = {
        "proxy_checkpoint": tiny_model_dirs[model], "mu": tmp_path / "mu.safetensors",
        "scores": tmp_path / "scores.tsv", "heatmap": tmp_path / "heat.png",
        "circuit": tmp_path / "circuit.json", "faithfulness": tmp_path / "faith.json",
    }  # fmt: skip
    cfg = compose(
        [f"model={model}", "cdt.n_per_label=3", "cdt.correct_only=false", "cdt.k=2",
         "cdt.random_sets=2", "task.eval_size=12", "cdt.batch_size=8"]
        + [f"io.{k}={v}" for k, v in io.items()]
    )  # fmt: skip
    mean_baseline.run(cfg)
    mu, meta = read_mu(io["mu"])
    assert mu.shape == (2, 4, 8) and mu.abs().sum() > 0
    assert len(meta["discovery"]["ids"]) == 9 and sorted(set(meta["discovery"]["labels"])) == [
        0,
        1,
        2,
    ]
    assert meta["data_checksum"] and meta["checkpoint"]["model_sha256"]
    score_heads.run(cfg)
    scores = pd.read_csv(io["scores"], sep="\t")
    assert list(scores.columns) == ["layer", "head", "score", "rank", "n_examples", "score_kind"]
    assert (
        len(scores) == 8
        and set(scores["n_examples"]) == {9}
        and sorted(scores["rank"]) == list(range(1, 9))
    )
    assert io["heatmap"].read_bytes()[:4] == b"\x89PNG"
    select_circuit.run(cfg)
    circuit = json.loads(io["circuit"].read_text())
    assert set(circuit) == CIRCUIT_KEYS
    assert (
        circuit["k"] == 2 and circuit["model"] == model and circuit["score_kind"] == "directional"
    )
    top = scores.sort_values("rank").head(2)
    assert circuit["circuit"] == [
        [int(a), int(b)] for a, b in zip(top["layer"], top["head"], strict=True)
    ]
    faithfulness.run(cfg)
    report = json.loads(io["faithfulness"].read_text())
    assert report["n_eval"] == 12 and len(report["random"]) == 2
    assert 0 <= report["circuit"]["accuracy"] <= 1
    assert -1 <= report["spearman_vs_single_head_ablation"]["tsv_directional"]["rho"] <= 1
