"""Tables and figures from hand-written metrics.json files with known numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from ctsft.errors import CtsftError
from ctsft.report.figures import FIGURES, build_figures, tradeoff_points
from ctsft.report.records import parse_path, read_records
from ctsft.report.tables import build_tables, to_latex, to_markdown


def write_metrics(root: Path, rel: str, **values) -> Path:
    path = root / rel / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))
    return path


def run(root, task, pair, variant, seed, acc, f1, proxy_after, before=0.80, pct=0.0, model="m"):
    return write_metrics(
        root,
        f"{task}/{model}/{pair}/{variant}/seed{seed}",
        accuracy=acc,
        macro_f1=f1,
        proxy_accuracy=proxy_after,
        baseline_proxy_accuracy=before,
        forgetting=proxy_after - before,  # the evaluate step's sign: after - before
        params_updated_pct=pct,
        method=variant.split("/")[0],
        seed=seed,
    )


@pytest.fixture()
def grid(tmp_path: Path) -> list[Path]:
    r = tmp_path / "results"
    return [
        # ind -> jav
        run(r, "nusax", "ind-jav", "zero_shot", 0, 0.40, 0.30, 0.80),
        run(r, "nusax", "ind-jav", "full_ft", 0, 0.50, 0.45, 0.60, pct=100.0),
        run(r, "nusax", "ind-jav", "full_ft", 1, 0.70, 0.65, 0.70, pct=100.0),
        run(r, "nusax", "ind-jav", "ctsft/k0.05", 0, 0.60, 0.55, 0.78, pct=0.5),
        run(r, "nusax", "ind-jav", "ctsft/k0.05", 1, 0.64, 0.59, 0.76, pct=0.5),
        run(r, "nusax", "ind-jav", "near_zero/k0.05", 0, 0.55, 0.50, 0.80, pct=0.5),
        run(r, "nusax", "ind-jav", "near_zero/k0.05", 1, 0.57, 0.52, 0.80, pct=0.5),
        # ind -> sun
        run(r, "nusax", "ind-sun", "zero_shot", 0, 0.70, 0.60, 0.80),
        run(r, "nusax", "ind-sun", "full_ft", 0, 0.72, 0.70, 0.65, pct=100.0),
        run(r, "nusax", "ind-sun", "ctsft/k0.05", 0, 0.71, 0.69, 0.79, pct=0.5),
        run(r, "nusax", "ind-sun", "near_zero/k0.05", 0, 0.75, 0.74, 0.80, pct=0.5),
        # XNLI en -> de
        run(r, "xnli", "en-de", "zero_shot", 0, 0.50, 0.48, 0.70, before=0.70),
        run(r, "xnli", "en-de", "ctsft/k0.05", 0, 0.55, 0.54, 0.69, before=0.70, pct=0.4),
    ]


def test_parse_path_reads_the_workflow_layout():
    assert parse_path("results/quick/nusax/e5_small/ind-jav/ctsft/k0.05/seed3/metrics.json") == {
        "seed": 3,
        "k": "0.05",
        "method": "ctsft",
        "proxy": "ind",
        "target": "jav",
        "task": "nusax",
        "model": "e5_small",
    }
    zero = parse_path("r/xnli/hub:Qwen/Qwen2.5-0.5B/en-de/zero_shot/seed0/metrics.json")
    assert zero["model"] == "hub:Qwen/Qwen2.5-0.5B" and zero["method"] == "zero_shot"
    assert "k" not in zero
    assert parse_path("somewhere/metrics.json") == {}


def test_table1_means_and_stds(grid, tmp_path):
    written = build_tables(grid, tmp_path / "tables")
    assert set(written) == {"table1_nusax", "table2_xnli", "table3_forgetting"}
    t1 = pd.read_csv(tmp_path / "tables/table1_nusax.csv")
    assert len(t1) == 8  # 4 methods at jav, 4 at sun
    assert list(t1[t1.target == "jav"].method) == ["zero_shot", "full_ft", "ctsft", "near_zero"]
    full = t1[(t1.target == "jav") & (t1.method == "full_ft")].iloc[0]
    assert full.n_seeds == 2
    assert full.accuracy_mean == pytest.approx(0.60)
    assert full.accuracy_std == pytest.approx(math.sqrt(0.02))  # sample std of 0.5, 0.7
    assert full.macro_f1_mean == pytest.approx(0.55)
    assert full.pct_params_updated_mean == pytest.approx(100.0)
    assert full.forgetting_mean == pytest.approx(-0.15)  # (0.6-0.8 + 0.7-0.8) / 2
    ct = t1[(t1.target == "jav") & (t1.method == "ctsft")].iloc[0]
    assert ct.accuracy_mean == pytest.approx(0.62)
    assert ct.accuracy_std == pytest.approx(math.sqrt(0.0008))
    zs = t1[(t1.target == "sun") & (t1.method == "zero_shot")].iloc[0]
    assert zs.n_seeds == 1 and math.isnan(zs.accuracy_std)

    md = (tmp_path / "tables/table1_nusax.md").read_text()
    assert "| ind → jav |" in md
    assert "60.0 ± 14.1 / 55.0 ± 14.1" in md  # full_ft at jav, in %
    assert "| 40.0 / 30.0 |" in md  # zero-shot: one run, no ±
    assert "| average |" in md and "| % params updated (of all weights) |" in md
    assert "| % params updated (of trainable weights) | – |" in md  # records that predate it
    tex = (tmp_path / "tables/table1_nusax.tex").read_text()
    assert r"60.0 $\pm$ 14.1" in tex and r"\toprule" in tex and r"full\_ft" in tex

    t2 = pd.read_csv(tmp_path / "tables/table2_xnli.csv")
    assert list(t2.method) == ["zero_shot", "ctsft"]


def test_table3_forgetting(grid, tmp_path):
    build_tables(grid, tmp_path / "tables")
    t3 = pd.read_csv(tmp_path / "tables/table3_forgetting.csv")
    nusax_ft = t3[(t3.task == "nusax") & (t3.method == "full_ft")].iloc[0]
    assert nusax_ft.n_runs == 3
    assert nusax_ft.proxy_accuracy_before == pytest.approx(0.80)
    assert nusax_ft.proxy_accuracy_after_mean == pytest.approx((0.60 + 0.70 + 0.65) / 3)
    assert nusax_ft.forgetting_mean == pytest.approx((0.60 + 0.70 + 0.65) / 3 - 0.80)
    zs = t3[(t3.task == "nusax") & (t3.method == "zero_shot")].iloc[0]
    assert zs.forgetting_mean == pytest.approx(0.0)
    assert len(t3) == 4 + 2  # nusax: 4 methods; xnli: 2
    assert "change" in (tmp_path / "tables/table3_forgetting.md").read_text()


def test_tables_only_for_requested_tasks(grid, tmp_path):
    nusax_only = [p for p in grid if "/xnli/" not in str(p)]
    written = build_tables(nusax_only, tmp_path / "t", tasks=["nusax"])
    assert set(written) == {"table1_nusax", "table3_forgetting"}
    assert not (tmp_path / "t/table2_xnli.csv").exists()


def test_several_k_values_get_their_own_rows(tmp_path):
    r = tmp_path / "r"
    paths = [
        run(r, "nusax", "ind-jav", "ctsft/k0.05", 0, 0.6, 0.6, 0.8),
        run(r, "nusax", "ind-jav", "ctsft/k10", 0, 0.7, 0.7, 0.8),
        run(r, "nusax", "ind-jav", "full_ft", 0, 0.5, 0.5, 0.8),
    ]
    records = read_records(paths)
    assert sorted(records.label) == ["ctsft (k=0.05)", "ctsft (k=10)", "full_ft"]


def test_pct_params_read_under_either_name(tmp_path):
    a = write_metrics(
        tmp_path, "nusax/m/ind-jav/full_ft/seed0", accuracy=0.5, pct_params_updated=12.5
    )
    b = write_metrics(
        tmp_path, "nusax/m/ind-jav/full_ft/seed1", accuracy=0.5, params_updated_pct=12.5
    )
    assert list(read_records([a, b]).pct_params_updated) == [12.5, 12.5]


def test_unplaceable_metrics_file_is_a_readable_error(tmp_path):
    path = tmp_path / "x" / "metrics.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(CtsftError, match="cannot tell its task, proxy, target, method"):
        read_records([path])
    with pytest.raises(CtsftError, match="does not exist"):
        read_records([tmp_path / "nope" / "metrics.json"])


ROLES = {"method": "ctsft", "near_zero": "near_zero", "zero_shot": "zero_shot"}


def test_tradeoff_points(grid):
    points = tradeoff_points(read_records(grid), ROLES).set_index(["task", "target"])
    # jav: ctsft 0.62 - near_zero 0.56 at zero-shot 0.40; sun: 0.71 - 0.75 at 0.70
    assert points.loc[("nusax", "jav"), "gain"] == pytest.approx(0.06)
    assert points.loc[("nusax", "jav"), "zero_shot"] == pytest.approx(0.40)
    assert points.loc[("nusax", "sun"), "gain"] == pytest.approx(-0.04)
    assert ("xnli", "de") not in points.index  # no near_zero run there
    # the spread over the seeds both ran: jav 0.60 - 0.55 and 0.64 - 0.57
    assert points.loc[("nusax", "jav"), "seed_sd"] == pytest.approx(0.02 / math.sqrt(2))
    assert math.isnan(points.loc[("nusax", "sun"), "seed_sd"])  # one seed
    # the roles come from the config: other names, other points; no roles, no points
    renamed = {**ROLES, "near_zero": "full_ft"}
    other = tradeoff_points(read_records(grid), renamed).set_index(["task", "target"])
    assert other.loc[("nusax", "jav"), "gain"] == pytest.approx(0.02)  # 0.62 - 0.60
    assert tradeoff_points(read_records(grid)).empty


def test_figures_are_drawn(grid, tmp_path):
    outputs = {name: tmp_path / "fig" / f"{name}.png" for name in FIGURES}
    written = build_figures(grid, outputs, claims=ROLES)
    for name in FIGURES:
        assert written[name].stat().st_size > 1000
        assert written[name].read_bytes()[:4] == b"\x89PNG"


def test_entry_points(grid, tmp_path, capsys):
    from ctsft.steps import figures, tables

    root = grid[0].parents[5]  # the results folder
    assert tables.main(["--out", str(tmp_path / "t"), str(root)]) == 0
    assert (tmp_path / "t/table1_nusax.md").exists()
    # compare and claims of config/config.yaml (the default Snakemake config), then --configfile's
    assert (tmp_path / "t/claims.md").exists() and (tmp_path / "t/summary.md").exists()
    quick = Path(__file__).resolve().parents[1] / "config/quick.yaml"
    assert tables.main(["--configfile", str(quick), "--out", str(tmp_path / "q"), str(root)]) == 0
    assert (
        "from full_ft / near_zero / sparse_random / norms_only"
        not in (tmp_path / "q/table1_nusax.md").read_text()
    )  # no per-row predictions in these records: no tests, no marks
    assert figures.main(["--out", str(tmp_path / "f"), str(root)]) == 0
    assert (tmp_path / "f/tradeoff.png").exists()
    (tmp_path / "empty").mkdir()
    assert tables.main(["--out", str(tmp_path / "t"), str(tmp_path / "empty")]) == 2
    assert "error: no metrics.json found" in capsys.readouterr().err


def test_table_writers_give_the_exact_text() -> None:
    """tabulate writes unpadded pipe rows, labels left and values right; Styler a booktabs table
    with the average row set apart and ±, →, %, _ escaped."""
    display = pd.DataFrame(
        [["ind → jav", "60.0 ± 14.1", "0.00"], ["average", "60.0", "0.31"]],
        columns=["pair", "full_ft", "% params"],
    )
    assert to_markdown(display, "T") == (
        "**T**\n\n| pair | full_ft | % params |\n|---|---:|---:|\n"
        "| ind → jav | 60.0 ± 14.1 | 0.00 |\n| average | 60.0 | 0.31 |\n"
    )
    assert to_latex(display, "T_1: 50%", "t1") == "\n".join(
        [
            r"\begin{table}[t]",
            r"\centering",
            r"\small",
            r"\caption{T\_1: 50\%}",
            r"\label{tab:t1}",
            r"\begin{tabular}{lrr}",
            r"\toprule",
            r"pair & full\_ft & \% params \\",
            r"\midrule",
            r"ind $\to$ jav & 60.0 $\pm$ 14.1 & 0.00 \\",
            r"\midrule",
            r"average & 60.0 & 0.31 \\",
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
            "",
        ]
    )


def test_the_report_front_page_lists_the_methods_the_config_ran() -> None:
    """workflow/report/workflow.rst (Jinja over snakemake.config): the quick run's methods and
    comparisons, nothing it did not run."""
    import jinja2
    import yaml

    repo = Path(__file__).resolve().parents[1]
    default = yaml.safe_load((repo / "config/config.yaml").read_text())
    quick = yaml.safe_load((repo / "config/quick.yaml").read_text())
    config = {**default, **quick, "compare": {**default["compare"], **quick["compare"]}}
    page = jinja2.Template((repo / "workflow/report/workflow.rst").read_text()).render(
        snakemake=type("S", (), {"config": config})
    )
    methods = page.split("Methods this run evaluated", 1)[1].split("Compared", 1)[0]
    for name in (
        "zero_shot",
        "full_ft",
        "ctsft",
        "near_zero",
        "lora",
        "sparse_random",
        "norms_only",
    ):
        assert f"**{name}**" in methods
    assert "random_heads" not in page  # the quick run has none
    assert "**ctsft** against full_ft, near_zero, sparse_random, norms_only" in page
