"""Do mechanisms transfer? The overlap / rank statistics by hand, the mechanism step end to end on
the tiny BERT (theta_1 and a real CT-SFT checkpoint), and its table and figure from fake records."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from ctsft.config import compose
from ctsft.errors import CtsftError
from ctsft.report.mechanism import compare, hypergeom_p, read_mechanism, set_overlap, spearman

N_HEADS = 8  # tiny_bert: 2 layers x 4 heads
K = 2


# ---------------------------------------------------------------- statistics
def test_overlap_jaccard_and_hypergeometric_p_by_hand() -> None:
    circuit = [[0, 0], [0, 1], [1, 2]]
    top = [[0, 1], [1, 2], [1, 3]]
    got = set_overlap(circuit, top, n_total=8)
    assert got["overlap"] == 2 and got["shared"] == [[0, 1], [1, 2]]
    assert got["jaccard"] == pytest.approx(2 / 4)  # |{01, 12}| / |{00, 01, 12, 13}|
    assert got["expected_overlap"] == pytest.approx(3 * 3 / 8)
    # P(X >= 2), 3 of 8 heads drawn, 3 of them circuit heads: (C(3,2) C(5,1) + C(3,3)) / C(8,3)
    by_hand = (math.comb(3, 2) * math.comb(5, 1) + math.comb(3, 3)) / math.comb(8, 3)
    assert by_hand == pytest.approx(2 / 7)
    assert got["p_value"] == pytest.approx(by_hand, rel=1e-12)
    assert hypergeom_p(0, 8, 3, 3) == pytest.approx(1.0)  # some overlap or none: certain
    assert hypergeom_p(2, 8, 2, 2) == pytest.approx(1 / math.comb(8, 2))  # the very same pair
    assert set_overlap([[0, 0]], [[1, 1]], 8)["jaccard"] == 0.0


def test_spearman_by_hand() -> None:
    a = [1.0, 2.0, 3.0, 4.0, 5.0]
    b = [0.2, 0.1, 0.4, 0.3, 9.0]  # ranks 2 1 4 3 5: d^2 = 1 + 1 + 1 + 1 + 0
    assert spearman(a, b)["rho"] == pytest.approx(1 - 6 * 4 / (5 * (5**2 - 1)))  # 0.8
    assert spearman(a, [-x for x in a])["rho"] == pytest.approx(-1.0)
    assert math.isnan(spearman(a, [1.0] * 5)["rho"])  # a constant ranking correlates with nothing


def test_compare_against_each_proxy_set() -> None:
    proxy = [[3.0, 2.0], [1.0, 0.0]]
    target = [[0.0, 2.0], [3.0, 1.0]]  # top-2: (1, 0), (0, 1)
    result = compare(proxy, target, [[1, 0], [0, 1]], {"circuit": [[0, 0], [0, 1]]}, 5)
    assert result["n_examples"] == 5
    assert result["overlap"]["circuit"]["overlap"] == 1
    assert result["overlap"]["circuit"]["jaccard"] == pytest.approx(1 / 3)
    # ranks 4 3 2 1 vs 1 3 4 2: d = 3, 0, -2, -1
    assert result["spearman"]["rho"] == pytest.approx(1 - 6 * 14 / (4 * 15))


# ---------------------------------------------------------------- the step on the tiny BERT
BASE = ["model=tiny_bert", "cdt.n_per_label=3", "cdt.correct_only=false", f"cdt.k={K}",
        "cdt.batch_size=8"]  # fmt: skip


@pytest.fixture(scope="module")
def discovered(tiny_model_dirs: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """theta_1 (the tiny BERT), its mu, directional scores, circuit, and a CT-SFT checkpoint
    trained on Javanese from that circuit."""
    from ctsft.steps import mean_baseline, score_heads, select_circuit, transfer

    root = tmp_path_factory.mktemp("mechanism")
    io = {
        "proxy_checkpoint": tiny_model_dirs["tiny_bert"], "mu": root / "mu.safetensors",
        "scores": root / "scores.tsv", "heatmap": root / "heat.png",
        "circuit": root / "circuit.json", "checkpoint": root / "ctsft",
    }  # fmt: skip
    cfg = compose(BASE + [f"io.{k}={v}" for k, v in io.items()])
    mean_baseline.run(cfg)
    score_heads.run(cfg)
    select_circuit.run(cfg)
    transfer.run(
        compose(
            BASE + ["train=tiny", "task.train_size=24", "target=jav", "method=ctsft"]
            + [f"io.{k}={v}" for k, v in io.items()]
        )
    )  # fmt: skip
    return io


def run_mechanism(io: dict, out: Path, target: str, *extra: str) -> tuple[dict, pd.DataFrame]:
    from ctsft.steps import mechanism

    outputs = {"mechanism": out / f"{target}.json", "mechanism_scores": out / f"{target}.tsv"}
    cfg = compose(
        BASE + [f"target={target}", "grid.variant=ctsft", f"grid.k='{K}'", *extra]
        + [f"io.{k}={v}" for k, v in io.items()] + [f"++io.{k}={v}" for k, v in outputs.items()]
    )  # fmt: skip
    record = mechanism.run(cfg)
    assert json.loads(outputs["mechanism"].read_text())["comparisons"] == record["comparisons"]
    return record, pd.read_csv(outputs["mechanism_scores"], sep="\t")


def test_theta1_on_the_proxy_data_is_the_proxy_mechanism(discovered: dict, tmp_path: Path) -> None:
    """Target = proxy: theta_1 finds the same discovery set, mu and scores, so the very circuit."""
    from ctsft.steps import mean_baseline, score_heads

    record, heads = run_mechanism(discovered, tmp_path, "ind")
    assert record["proxy_scores_source"] == "scores.tsv" and record["score_kind"] == "directional"
    assert record["grid"] == {
        "task": "nusax", "model": "tiny_bert", "proxy": "ind", "target": "ind",
        "variant": "ctsft", "k": str(K), "seed": 0,
    }  # fmt: skip
    assert record["k"] == K and record["n_heads_total"] == N_HEADS
    same = record["comparisons"]["theta1_target"]
    assert set(same["overlap"]) == {"circuit"}  # the circuit is of this kind: no second set
    circuit = same["overlap"]["circuit"]
    assert circuit["overlap"] == K and circuit["jaccard"] == 1.0
    assert circuit["p_value"] == pytest.approx(1 / math.comb(N_HEADS, K))
    assert same["spearman"]["rho"] == pytest.approx(1.0)
    assert same["top_k"] == json.loads(discovered["circuit"].read_text())["circuit"]
    assert len(heads) == N_HEADS and heads["in_circuit"].sum() == K
    proxy = pd.read_csv(discovered["scores"], sep="\t").sort_values(["layer", "head"])
    assert heads["proxy"].tolist() == pytest.approx(proxy["score"].tolist(), rel=1e-6)
    assert heads["theta1_target"].tolist() == pytest.approx(proxy["score"].tolist(), rel=1e-4)
    # the CT-SFT model (trained on jav) is another model: its scores moved, and they are what
    # mean_baseline + score_heads give for that checkpoint on this set (its own mu, not theta_1's)
    assert heads["ctsft_target"].tolist() != pytest.approx(heads["theta1_target"].tolist())
    own = {"proxy_checkpoint": discovered["checkpoint"], "mu": tmp_path / "mu.safetensors",
           "scores": tmp_path / "scores.tsv", "heatmap": tmp_path / "heat.png"}  # fmt: skip
    cfg = compose(BASE + [f"io.{k}={v}" for k, v in own.items()])
    mean_baseline.run(cfg)
    score_heads.run(cfg)
    rescored = pd.read_csv(own["scores"], sep="\t").sort_values(["layer", "head"])
    assert heads["ctsft_target"].tolist() == pytest.approx(rescored["score"].tolist(), rel=1e-4)
    ctsft = record["comparisons"]["ctsft_target"]
    assert 0 < ctsft["overlap"]["circuit"]["p_value"] <= 1
    assert -1 <= ctsft["spearman"]["rho"] <= 1 and ctsft["n_examples"] == 9


def test_target_language_in_another_score_kind(discovered: dict, tmp_path: Path) -> None:
    """jav with attribution: the proxy is re-scored in that kind and its top-k compared too."""
    record, heads = run_mechanism(discovered, tmp_path, "jav", "cdt.score=attribution")
    assert record["proxy_scores_source"] == "rescored" and record["score_kind"] == "attribution"
    assert (
        record["circuit_score_kind"] == "directional" and record["discovery"]["rules_differ"] == []
    )
    target = record["discovery"]["target"]
    assert len(target["ids"]) == 9 and sorted(set(target["labels"])) == [0, 1, 2]
    assert target["pool_size"] == 500  # the Javanese training split
    assert set(heads.columns) == {
        "layer", "head", "proxy", "theta1_target", "ctsft_target", "in_circuit", "score_kind",
    }  # fmt: skip
    assert len(heads) == N_HEADS and set(heads["score_kind"]) == {"attribution"}
    directional = pd.read_csv(discovered["scores"], sep="\t").sort_values(["layer", "head"])
    assert heads["proxy"].tolist() != pytest.approx(directional["score"].tolist())
    for name in ("theta1_target", "ctsft_target"):
        result = record["comparisons"][name]
        assert set(result["overlap"]) == {"circuit", "proxy_top_k"}
        for overlap in result["overlap"].values():
            assert 0 <= overlap["jaccard"] <= 1 and 0 < overlap["p_value"] <= 1
        assert -1 <= result["spearman"]["rho"] <= 1 and len(result["top_k"]) == K
    assert heads["theta1_target"].tolist() != pytest.approx(heads["proxy"].tolist())


# ---------------------------------------------------------------- table and figure
def fake_record(
    tmp_path: Path, target: str, seed: int, shared: int, rho: float
) -> tuple[Path, Path]:
    """A mechanism.json and its per-head TSV with `shared` of 2 circuit heads in the top-2."""
    top = [[0, 0], [0, 1]][:shared] + [[1, 3], [1, 2]][: 2 - shared]
    ov = set_overlap([[0, 0], [0, 1]], top, 8)
    result = {
        "n_examples": 9, "top_k": top, "spearman": {"rho": rho, "p_value": 0.01},
        "overlap": {"circuit": ov},
    }  # fmt: skip
    record = {
        "grid": {"task": "nusax", "model": "tiny_bert", "proxy": "ind", "target": target,
                 "variant": "ctsft", "k": "2", "seed": seed},
        "k": 2, "n_heads_total": 8, "score_kind": "directional",
        "comparisons": {"theta1_target": result, "ctsft_target": result},
    }  # fmt: skip
    path = tmp_path / f"{target}{seed}.json"
    path.write_text(json.dumps(record))
    heads = pd.DataFrame(
        {"layer": [i // 4 for i in range(8)], "head": [i % 4 for i in range(8)],
         "proxy": range(8), "theta1_target": range(8), "ctsft_target": range(8, 0, -1),
         "in_circuit": [i < 2 for i in range(8)], "score_kind": "directional"}
    )  # fmt: skip
    heads.to_csv(tmp_path / f"{target}{seed}.tsv", sep="\t", index=False)
    return path, tmp_path / f"{target}{seed}.tsv"


def test_mechanism_table_and_figure_from_records(tmp_path: Path) -> None:
    from ctsft.report.figures import mechanism_figure
    from ctsft.report.tables import build_mechanism_table

    made = [
        fake_record(tmp_path, "jav", 0, 2, 0.9),
        fake_record(tmp_path, "jav", 1, 1, 0.5),
        fake_record(tmp_path, "sun", 0, 0, -0.1),
    ]
    records, scores = [r for r, _ in made], [s for _, s in made]
    written = build_mechanism_table(records, tmp_path / "tables")
    assert [p.name for p in written] == [f"mechanism_transfer.{f}" for f in ("csv", "md", "tex")]
    with written[0].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2  # records x (theta_1, CT-SFT), one proxy set each
    assert [(r["target"], r["seed"], r["comparison"]) for r in rows[:3]] == [
        ("jav", "0", "theta1_target"), ("jav", "0", "ctsft_target"), ("jav", "1", "theta1_target"),
    ]  # fmt: skip
    assert float(rows[0]["jaccard"]) == 1.0 and float(rows[0]["p_value"]) == pytest.approx(1 / 28)
    md = written[1].read_text()
    # jav over its two seeds: overlap (2 + 1) / 2, Jaccard (1 + 1/3) / 2 ± 0.47, rho 0.70 ± 0.28
    assert "| ind → jav | ctsft | theta_1 | circuit | 1.5 / 2 | 0.67 ± 0.47 |" in md
    assert "| 0.70 ± 0.28 | 2 |" in md
    assert "| ind → sun | ctsft | CT-SFT | circuit | 0 / 2 | 0.00 |" in md
    assert md.count("\n| ind → ") == 4 and r"\to" in written[2].read_text()
    png = mechanism_figure(records, scores, tmp_path / "figures" / "mechanism_transfer.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_broken_record_is_one_line_naming_the_rule(tmp_path: Path) -> None:
    path, _ = fake_record(tmp_path, "jav", 0, 1, 0.5)
    record = json.loads(path.read_text())
    del record["comparisons"]["ctsft_target"]
    path.write_text(json.dumps(record))
    with pytest.raises(
        CtsftError, match=r"has no ctsft_target: rerun with `snakemake --forcerun mechanism`$"
    ):
        read_mechanism(path)
    path.write_text("{")
    with pytest.raises(CtsftError, match="is not valid JSON"):
        read_mechanism(path)
