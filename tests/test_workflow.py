"""The Snakemake workflow: planning, lint, config validation, and a real tiny end-to-end run.

The end-to-end test runs the real DAG (config/tiny.yaml, tiny random BERT) into a temporary
results folder:

    pytest tests/test_workflow.py::test_tiny_end_to_end
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
SNAKEFMT = str(BIN / "snakefmt")
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"

NUSAX_LANGS = 12
XNLI_LANGS = 15
STEPS = (
    "prepare_model",
    "finetune",
    "mean_baseline",
    "score_heads",
    "select_circuit",
    "faithfulness",
    "transfer",
    "evaluate",
)


def offline_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="disabled",
        # any attempt to reach the network fails fast instead of hanging
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
    )
    return env


def snakemake(*args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [SNAKEMAKE, *args],
        cwd=REPO,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The `Job stats` table of a (dry) run as {rule: count}."""
    counts: dict[str, int] = {}
    block = output.split("Job stats:", 1)
    if len(block) < 2:
        return counts
    for line in block[1].splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match or match.group(1) == "total":
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def plan(*args: str) -> dict[str, int]:
    proc = snakemake("-n", *args, "--quiet", "rules")
    return job_counts(proc.stdout + proc.stderr)


def load_config(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())


# ---------------------------------------------------------------- planning
def test_paper_grid_plans_every_job():
    counts = plan()  # config/config.yaml is the Snakefile's default configfile
    pairs = 2 * (NUSAX_LANGS - 1) + (XNLI_LANGS - 1)  # ind and eng -> NusaX, en -> XNLI
    seeds, ks = 4, 1
    trained = 1 + 5 * ks  # full_ft + (ctsft, near_zero, random_heads, sparse_random, lora) per k
    # full_ft's checkpoints are temporary in the paper grid (keep_full_checkpoints: false)
    assert counts["transfer_temp"] == pairs * seeds == 144
    assert counts["transfer"] + counts["transfer_temp"] == pairs * trained * seeds == 864
    assert counts["evaluate"] == pairs * seeds == 144  # every transferred method of a pair and seed
    assert counts["evaluate_as_is"] == pairs == 36  # zero-shot: theta_1 on each target, once
    for rule in ("finetune", "evaluate_proxy", "mean_baseline", "score_heads"):
        assert counts[rule] == 3, rule  # one per (task, proxy)
    assert counts["select_circuit"] == counts["faithfulness"] == 3 * ks
    assert counts["prepare_model"] <= 1  # 0 when results/models/e5_small exists already
    assert counts["tables"] == counts["figures"] == counts["all"] == 1
    assert counts["mechanism"] == pairs * ks * seeds == 144  # ctsft only (kind heads, circuit)
    assert counts["mechanism_report"] == 1


def plan_quick(tmp_path, *targets: str) -> dict:
    """Job counts of a dry run of config/quick.yaml into `tmp_path` (optionally for `targets`)."""
    return plan(
        *targets,
        "--configfile",
        "config/quick.yaml",
        "--config",
        f"results_dir={tmp_path}/r",
        f"models_dir={tmp_path}/m",
    )


def test_quick_config_replaces_the_paper_grid(tmp_path):
    counts = plan_quick(tmp_path)
    assert counts == {
        "prepare_model": 1,
        # NusaX ind (Table 1) and XNLI en (Table 2)
        "finetune": 2,
        "evaluate_proxy": 2,
        "mean_baseline": 2,
        "score_heads": 2,
        "select_circuit": 2,
        "faithfulness": 2,
        # jav, sun, bug, sw x full_ft, ctsft, near_zero, lora, sparse_random, norms_only
        "transfer": 4 * 6,
        "evaluate": 4,  # per pair (1 seed): its 6 transferred methods
        "evaluate_as_is": 4,  # zero_shot
        "tables": 1,
        "figures": 1,
        "mechanism": 4,  # jav, sun, bug, sw x ctsft (1 k, 1 seed)
        "mechanism_report": 1,
        "all": 1,
    }


def test_nusax_grid_plans_its_claims_grid(tmp_path):
    """config/nusax_grid.yaml: 11 targets x 4 seeds x 6 trained methods, one evaluation job per
    target and seed, zero-shot once per target, no mechanism jobs (report.mechanism: false)."""
    counts = plan(
        "--configfile",
        "config/nusax_grid.yaml",
        "--config",
        f"results_dir={tmp_path}/r",
        f"models_dir={tmp_path}/m",
    )
    targets, seeds = NUSAX_LANGS - 1, 4
    assert counts["transfer"] + counts["transfer_temp"] == targets * seeds * 6 == 264
    assert counts["transfer_temp"] == targets * seeds  # full_ft's are deleted once evaluated
    assert counts["evaluate"] == targets * seeds and counts["evaluate_as_is"] == targets
    assert "mechanism" not in counts and counts["finetune"] == 1


def test_one_pair_runs_only_its_chain(tmp_path):
    """One method's metrics of a pair: the pair's chain; its evaluation job scores (so needs)
    every method transferred for that pair and seed."""
    target = f"{tmp_path}/r/nusax/e5_small/ind-jav/ctsft/k0.05/seed0/metrics.json"
    counts = plan_quick(tmp_path, target)
    assert counts == {
        "prepare_model": 1,
        "finetune": 1,
        "evaluate_proxy": 1,
        "mean_baseline": 1,
        "score_heads": 1,
        "select_circuit": 1,
        "transfer": 6,
        "evaluate": 1,
    }


def test_model_switch_plans_without_network(tmp_path):
    counts = plan(
        "--config",
        "model=qwen2_5_0_5b",
        f"results_dir={tmp_path}/r",
        f"models_dir={tmp_path}/m",
    )
    assert counts["prepare_model"] == 1
    assert counts["transfer"] + counts["transfer_temp"] == 864  # full_ft's are temp() here
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------- lint and format
@pytest.mark.parametrize("config", ["config", "quick", "tiny", "nusax_grid"])
def test_snakemake_lint_is_clean(config):
    proc = snakemake("--lint", "--configfile", f"config/{config}.yaml", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Congratulations, your workflow is in a good condition!" in out
    assert "Lints for" not in out


def test_snakefmt_check_passes():
    proc = subprocess.run(
        [SNAKEFMT, "--check", "."], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------- config schema
@pytest.mark.parametrize("config", ["config", "quick", "tiny", "nusax_grid"])
def test_config_files_validate(config):
    from snakemake.utils import validate

    validate(load_config(config), str(SCHEMA))


def test_schema_rejects_a_typo_readably():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    cfg = load_config("quick")
    cfg["seedz"] = cfg.pop("seeds")
    with pytest.raises(WorkflowError) as err:
        validate(cfg, str(SCHEMA))
    message = str(err.value)
    assert "seedz" in message and "not allowed" in message


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda c: c["experiments"][0].update(proxy="klingon"), ["klingon"]),
        (lambda c: c["methods"][0].update(overides=["method=ctsft"]), ["overides"]),
        (lambda c: c["hydra_overrides"].update(trainn=["train=quick"]), ["trainn"]),
        (lambda c: c.update(seeds="0"), ["'0' is not of type 'array'"]),
    ],
)
def test_schema_rejects_bad_values(mutate, words):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    cfg = copy.deepcopy(load_config("quick"))
    mutate(cfg)
    with pytest.raises(WorkflowError) as err:
        validate(cfg, str(SCHEMA))
    for word in words:
        assert word in str(err.value)


def test_a_typo_stops_snakemake_before_any_job(tmp_path):
    proc = snakemake("-n", "--configfile", "config/tiny.yaml", "--config", "seedz=[1]", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "seedz" in out and "Additional properties are not allowed" in out


# ---------------------------------------------------------------- report
def assert_clean_report(report: Path) -> None:
    """A built report.html without docutils complaints (e.g. an undefined |substitution|)."""
    html = report.read_text(errors="replace")
    assert "System Message" not in html, re.findall(r"System Message[^<]{0,200}", html)[:3]


STATISTICS = ("comparisons", "summary", "claims")


def test_report_front_page_has_no_system_messages(tmp_path):
    """The report of the tiny config, built over placeholder outputs (the captions are the same).
    A category named like one of the report's own pages (its "Statistics") is a duplicate
    docutils target, which this catches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = tmp_path / "results"
    for name in ("table1_nusax", "table3_forgetting", "mechanism_transfer", *STATISTICS):
        for fmt in ("csv", "md", "tex"):
            (results / "tables").mkdir(parents=True, exist_ok=True)
            (results / "tables" / f"{name}.{fmt}").write_text("method,accuracy\nctsft,0.5\n")
    figures = [
        results / "figures" / f"{n}.png"
        for n in ("accuracy_vs_params", "forgetting", "tradeoff", "mechanism_transfer")
    ]
    for png in [*figures, results / "nusax/tiny_bert/ind/heatmap.png"]:
        png.parent.mkdir(parents=True, exist_ok=True)
        plt.figure(figsize=(1, 1))
        plt.savefig(png)
        plt.close()
    report = tmp_path / "report.html"
    snakemake(*tiny_args(results), "--report", str(report))
    assert_clean_report(report)


# ---------------------------------------------------------------- end to end
def missing_steps() -> list[str]:
    return [s for s in STEPS if importlib.util.find_spec(f"ctsft.steps.{s}") is None]


def tiny_args(results: Path, configfile: Path | str = "config/tiny.yaml") -> list[str]:
    return [
        "--configfile",
        str(configfile),
        "--config",
        f"results_dir={results}",
        f"models_dir={results}/models",
    ]


def csv_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_tiny_end_to_end(tmp_path, monkeypatch):
    missing = missing_steps()
    if missing:
        pytest.skip(f"workflow steps not implemented yet: {', '.join(missing)}")
    results = tmp_path / "results"
    cfg = load_config("tiny")
    methods = [m["name"] for m in cfg["methods"]]
    targets = cfg["experiments"][0]["targets"]
    seeds = cfg["seeds"]
    assert len(targets) == len(seeds) == 2  # the multi-seed, multi-target statistics path

    # 1. the whole DAG, for real
    snakemake("--cores", "2", *tiny_args(results), timeout=1800)
    tables = results / "tables"
    for name in ("table1_nusax", "table3_forgetting"):
        for fmt in ("csv", "md", "tex"):
            assert (tables / f"{name}.{fmt}").stat().st_size > 0
    table1 = csv_rows(tables / "table1_nusax.csv")
    assert len(table1) == len(targets) * len(methods)
    assert {r["method"] for r in table1} == set(methods)
    assert all(0.0 <= float(r["accuracy_mean"]) <= 1.0 for r in table1)
    # the multi-seed, multi-target statistics: every transferred cell has both seeds, CT-SFT
    # is tested against the rivals of the config's `compare` that ran, per target and across
    # the two targets, and each claim gets a verdict by rule
    assert {r["method"]: r["n_seeds"] for r in table1 if r["method"] != "zero_shot"} == {
        m: str(len(seeds)) for m in methods if m != "zero_shot"
    }
    ctsft_rows = [r for r in table1 if r["method"] == "ctsft"]
    assert all(0 < float(r["p_holm_vs_full_ft"]) <= 1 for r in ctsft_rows), ctsft_rows
    assert all(float(r["p_holm_vs_full_ft"]) >= float(r["p_vs_full_ft"]) for r in ctsft_rows)
    for name in ("comparisons", "summary", "claims"):
        for fmt in ("csv", "md", "tex"):
            assert (tables / f"{name}.{fmt}").stat().st_size > 0
    comparisons = csv_rows(tables / "comparisons.csv")
    assert [(r["method"], r["rival"]) for r in comparisons] == [
        ("ctsft", "full_ft"),
        ("ctsft", "near_zero"),
    ]
    for r in comparisons:
        assert r["n_targets"] == str(len(targets))
        assert float(r["ci_lo"]) <= float(r["difference"]) <= float(r["ci_hi"])
    summary = csv_rows(tables / "summary.csv")
    assert [r["method"] for r in summary] == methods
    claims = {r["claim"]: r for r in csv_rows(tables / "claims.csv")}
    assert claims["beats_full_ft"]["verdict"] in ("supported", "contradicted", "inconclusive")
    assert claims["beats_sparse_random"]["verdict"] == "not run"  # tiny runs no sparse_random
    spearman = next(r for r in claims.values() if r["kind"] == "spearman")
    assert spearman["verdict"] == "inconclusive"  # two targets: too few for a rank correlation
    assert len(csv_rows(tables / "table3_forgetting.csv")) == len(methods)
    # one evaluate job per pair and seed ran every transferred method, each on its own line
    log = (results / "logs/evaluate/nusax/tiny_bert/ind-jav/seed1.log").read_text()
    assert log.count("$ python -m ctsft.steps.evaluate ") == len(methods) - 1  # not zero_shot
    for fig in ("accuracy_vs_params", "forgetting", "tradeoff"):
        assert (results / "figures" / f"{fig}.png").stat().st_size > 0
    assert (results / "nusax/tiny_bert/ind/heatmap.png").stat().st_size > 0
    mechanism = csv_rows(tables / "mechanism_transfer.csv")  # theta_1 and CT-SFT per target
    assert len(mechanism) == len(targets) * len(seeds) * 2  # per target and seed
    assert all(0 < float(r["p_value"]) <= 1 for r in mechanism)
    assert (results / "figures" / "mechanism_transfer.png").stat().st_size > 0

    # 2. a second run has nothing to do, quickly
    started = time.monotonic()
    again = snakemake("--cores", "2", *tiny_args(results))
    assert "Nothing to be done" in again.stdout + again.stderr
    assert time.monotonic() - started < 15

    # ... its report has no docutils system messages
    snakemake(*tiny_args(results), "--report", str(tmp_path / "report.html"))
    assert_clean_report(tmp_path / "report.html")

    # ... and moving the data ($CTSFT_DATA_ROOT, a data.root param of every data step) reruns
    # every job that reads data, but not the model preparation
    moved = tmp_path / "data"
    shutil.copytree(REPO.parent / "shared" / "data" / "nusax", moved / "nusax")
    monkeypatch.setenv("CTSFT_DATA_ROOT", str(moved))
    counts = plan(*tiny_args(results))
    assert counts["finetune"] == 1 and counts["transfer"] == len(targets) * len(seeds) * 3, counts
    assert counts["evaluate"] == len(targets) * len(seeds) and "prepare_model" not in counts
    assert counts["evaluate_as_is"] == len(targets)
    monkeypatch.delenv("CTSFT_DATA_ROOT")

    # 3. changing only ctsft's training settings reruns only ctsft and what depends on it
    edited = copy.deepcopy(cfg)
    for m in edited["methods"]:
        if m["name"] == "ctsft":
            m["overrides"] = [*m["overrides"], "train.lr=2.0e-3"]
    edited_file = tmp_path / "tiny_ctsft_edit.yaml"
    edited_file.write_text(yaml.safe_dump(edited))
    counts = plan(*tiny_args(results, edited_file))
    runs = len(targets) * len(seeds)
    assert counts == {
        "transfer": runs, "evaluate": runs, "mechanism": runs, "mechanism_report": 1,
        "tables": 1, "figures": 1, "all": 1,
    }  # fmt: skip

    # 4. a bad override is refused before any job runs (every job's config is composed first)
    broken = copy.deepcopy(cfg)
    broken["hydra_overrides"]["transfer"] = ["train=no_such_train_config"]
    broken_file = tmp_path / "tiny_broken.yaml"
    broken_file.write_text(yaml.safe_dump(broken))
    checkpoint = results / "nusax/tiny_bert/ind-jav/full_ft/seed0/checkpoint"
    assert checkpoint.is_dir()
    failed = snakemake(
        "--cores", "1", str(checkpoint), *tiny_args(results, broken_file), check=False
    )
    assert failed.returncode != 0
    assert "unknown train=no_such_train_config" in failed.stdout + failed.stderr
    assert checkpoint.is_dir()  # nothing ran

    # ... and a job that fails leaves no output that Snakemake takes as finished: a corrupt
    # circuit makes CT-SFT's transfer fail (the file is put back as it was afterwards)
    circuit = results / "nusax/tiny_bert/ind/k2/circuit.json"
    checkpoint = results / "nusax/tiny_bert/ind-jav/ctsft/k2/seed0/checkpoint"
    assert checkpoint.is_dir()
    original, stat = circuit.read_bytes(), circuit.stat()
    circuit.write_text("{not json")
    failed = snakemake("--cores", "1", str(checkpoint), *tiny_args(results), check=False)
    circuit.write_bytes(original)
    os.utime(circuit, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert failed.returncode != 0
    assert "is not valid JSON" in failed.stdout + failed.stderr
    assert not checkpoint.exists()
    # ... and asking for it again plans to rebuild it (its evaluation, done before, stays)
    counts = plan(str(checkpoint), *tiny_args(results))
    assert counts.get("transfer") == 1


@pytest.mark.slow
def test_full_checkpoints_are_temporary_on_request(tmp_path):
    """keep_full_checkpoints: false: full_ft's checkpoint is deleted once evaluated, CT-SFT's
    lean one stays (a few KB beside theta_1)."""
    results = tmp_path / "results"
    run = results / "nusax/tiny_bert/ind-jav"
    metrics = [run / f"{v}/seed0/metrics.json" for v in ("full_ft", "ctsft/k2")]
    snakemake(
        "--cores", "2", *map(str, metrics), *tiny_args(results), "keep_full_checkpoints=false"
    )
    assert all(m.is_file() for m in metrics)
    assert not (run / "full_ft/seed0/checkpoint").exists()
    lean = run / "ctsft/k2/seed0/checkpoint"
    stored = sorted(p.name for p in lean.iterdir() if not p.name.startswith("."))
    assert stored == ["task_model.json", "trained.safetensors"]
    assert (results / "nusax/tiny_bert/ind/proxy_checkpoint/model.safetensors").is_file()
