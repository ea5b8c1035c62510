"""What a Snakemake config costs on disk, before it runs, and what a finished run holds.

    .venv/bin/python benchmarks/bench_disk.py                                 # the four configs below
    .venv/bin/python benchmarks/bench_disk.py config/quick.yaml --set keep_full_checkpoints=false
    .venv/bin/python benchmarks/bench_disk.py config/quick.yaml --measure results/quick

No training and no weights: each model is built on the `meta` device from its config (the JSON
files next to this script; the tiny models from `ctsft.models.tiny`), each method variant's plan
comes from `ctsft.train.methods.build_plan` (with a fabricated circuit of the config's k heads),
and the jobs come from the config expanded as workflow/rules/common.smk expands it (pairs x
variants x seeds), cross-checked against the job counts of `snakemake -n` (printed per rule).

Checkpoint formats (`ctsft.models.checkpoint`):
- theta_1 (`proxy_checkpoint`) and a full fine-tuning transfer that trains every parameter: the
  whole model (`model.safetensors`, fp32, tied weights once) + tokenizer + config.json + record;
- a transfer whose plan trains a subset: `trained.safetensors` with the trained values only
  (whole norm tensors, row / column spans of the heads, scattered entries + int32 indices) + its
  record; full fine-tuning with frozen token embeddings is one of these;
- LoRA: a PEFT adapter (rank x (in + out) per q/k/v/o projection) + adapter_config.json;
- zero-shot: nothing (theta_1 is evaluated).
With `keep_full_checkpoints: false` Snakemake deletes full fine-tuning's checkpoints once their
consumers are done: the table gives what is written and what stays.

`--measure RESULTS_DIR` sums the real sizes of a finished run per artifact kind (each file
matched against the `ctsft.layout` templates) and prints them beside the prediction. The last line
is `RESULT config=... predicted_gb=... stays_gb=... old_gb=... [measured_gb=...]` per config.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from snakemake.utils import update_config
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from ctsft.adapters import get_adapter
from ctsft.circuit.selection import resolve_k
from ctsft.data.tasks import TASKS
from ctsft.layout import TEMPLATES, path, variant_name
from ctsft.models.tiny import tiny_config
from ctsft.train.methods import build_plan
from ctsft.workflow_config import (
    check_config,
    model_slug,
    override_value,
    step_overrides,
    validate_config,
    variant_method_config,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).with_name("configs")
DEFAULT_CONFIGFILE = REPO / "config" / "config.yaml"  # the Snakefile's `configfile:`
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_RUNS = ("config/quick.yaml", "config/quick_causal.yaml", "config/config.yaml", "config/paper_qwen.yaml")  # fmt: skip
FLOAT_BYTES = 4  # fp32 master weights
INDEX_BYTES = 4  # int32 flat index of a scattered entry (int64 only past 2^31 entries)

# Tokenizer files a full checkpoint and the base folder carry (bytes). Measured from
# models_dir/<model>/ when it exists; otherwise these: e5-small and SmolLM2 measured on prepared
# folders (tokenizer.json + tokenizer_config.json [+ chat template]); Qwen2.5 and Gemma-3 are the
# sizes of the hub's tokenizer.json + tokenizer_config.json (estimates: a converted folder may
# differ by a few KB); the tiny models' word-level tokenizer is a few KB.
TOKENIZER_BYTES = {
    "e5_small": 16_766_585 + 339,
    "smollm2_135m": 3_522_871 + 296 + 368,
    "qwen2_5_0_5b": 7_031_645 + 7_305,
    "gemma3_270m": 33_384_568 + 1_158_000,
}
TINY_TOKENIZER_BYTES = 20_000
CONFIG_JSON_BYTES = 1_000  # config.json of a full checkpoint
RECORD_BYTES = 8_000  # task_model.json with its training record (7.7-9.1 KB measured, tiny run)
ADAPTER_CONFIG_BYTES = 1_000  # PEFT adapter_config.json

# Small artifacts (bytes per file; estimates, `--measure` gives the real ones): every job writes a
# log and a benchmark TSV beside its outputs.
LOG_BYTES, BENCHMARK_BYTES = 4_000, 250
METRICS_BYTES = 6_500  # metrics.json with its provenance record (6.3 KB measured)
SMALL_OUTPUTS = {  # rule -> bytes of its outputs that do not depend on the model
    "evaluate_proxy": METRICS_BYTES,
    "select_circuit": 4_000,
    "faithfulness": 6_000,
    "mechanism": 20_000,  # mechanism.json + mechanism_scores.tsv
    "tables": 9 * 3_000,
    "figures": 3 * 60_000,
    "mechanism_report": 3 * 3_000 + 60_000,
}


# ---------------------------------------------------------------- the config, as Snakemake sees it
def effective_config(configfile: str | Path, sets: list[str]) -> dict[str, Any]:
    """config/config.yaml, then `configfile` over it (Snakemake merges a --configfile into the
    Snakefile's configfile, dicts key by key), then `--set key=value`, validated with defaults."""
    import yaml

    config = yaml.safe_load(DEFAULT_CONFIGFILE.read_text())
    if Path(configfile).resolve() != DEFAULT_CONFIGFILE.resolve():
        update_config(config, yaml.safe_load((REPO / configfile).read_text()) or {})
    for item in sets:
        key, _, value = item.partition("=")
        config[key] = yaml.safe_load(value)
    validate_config(config, SCHEMA)
    check_config(config)
    return config


def dry_run_counts(configfile: str | Path, sets: list[str]) -> dict[str, int] | None:
    """Jobs per rule of `snakemake -n --forceall` (its `Job stats` table: the whole DAG, whatever
    exists already); None without snakemake."""
    snakemake = Path(sys.executable).parent / "snakemake"
    if not snakemake.exists():
        return None
    cmd = [str(snakemake), "-n", "--forceall", "--quiet", "rules", "--configfile", str(configfile)]
    cmd += ["--config", *sets] if sets else []
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"error: snakemake -n failed for {configfile}:\n{proc.stderr[-2000:]}")
    stats = (proc.stdout + proc.stderr).split("Job stats:", 1)[-1]
    return {
        m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M) if m[1] != "total"
    }


@dataclass(frozen=True)
class Variant:
    name: str  # the {variant} path component
    method: dict[str, Any]  # the method config with the variant's overrides
    circuit: bool
    transfer: bool


def variants(config: dict[str, Any]) -> list[Variant]:
    """Every method variant (one per circuit size for circuit methods), as common.smk's."""
    out = []
    for spec in config["methods"]:
        overrides = list(spec["overrides"])
        method = variant_method_config(str(override_value(overrides, "method")), overrides)
        ks = config["ks"] if spec.get("circuit", False) else [None]
        for k in ks:
            out.append(
                Variant(
                    variant_name(spec["name"], k),
                    method,
                    bool(spec.get("circuit", False)),
                    bool(spec.get("transfer", True)),
                )
            )
    return out


def pairs(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for exp in config["experiments"]:
        targets = exp.get("targets", "all")
        if targets == "all":
            targets = [t for t in TASKS[exp["task"]].languages if t != exp["proxy"]]
        out += [(exp["task"], exp["proxy"], t) for t in targets]
    return out


def freezes_embeddings(config: dict[str, Any], step: str, task: str, proxy: str) -> bool:
    """model.freeze_embeddings of a job of `step` (the model YAML says false for every model)."""
    value = override_value(step_overrides(config, step, (task, proxy)), "model.freeze_embeddings")
    return str(value).lower() == "true"


# ---------------------------------------------------------------- models on the meta device
def model_settings(model: str) -> tuple[Any, str]:
    """(transformers config, kind) of a registered model, from its JSON here or its tiny config."""
    from ctsft.config_files import group_config

    kind = group_config("model", model)["kind"]
    if model.startswith("tiny_"):
        return tiny_config(model.removeprefix("tiny_")), kind
    file = CONFIGS / f"{model}.json"
    if not file.is_file():
        raise SystemExit(f"error: no config of {model} in {CONFIGS}: add its config.json there")
    settings = json.loads(file.read_text())
    settings.pop("architectures", None)
    return AutoConfig.for_model(settings.pop("model_type"), **settings), kind


def meta_model(model: str, num_labels: int) -> torch.nn.Module:
    """The task model (encoder + classifier, or the causal LM) with no storage."""
    config, kind = model_settings(model)
    with torch.device("meta"):
        if kind == "encoder":
            config.num_labels = num_labels
            return AutoModelForSequenceClassification.from_config(config)
        return AutoModelForCausalLM.from_config(config)


def base_model_tensors(model: str) -> list[tuple[str, str, list[int]]]:
    """The prepared base folder's weights: the backbone without a task head (encoder), or the LM."""
    config, kind = model_settings(model)
    with torch.device("meta"):
        if kind == "encoder":
            hf = AutoModel.from_config(config, add_pooling_layer=False)
        else:
            hf = AutoModelForCausalLM.from_config(config)
    return [(n, "F32", list(p.shape)) for n, p in hf.named_parameters()]


def fabricated_circuit(n_layers: int, n_heads: int, k: Any) -> dict[str, Any]:
    """k heads per list, spread over the layers (distinct key/value groups where possible: the
    largest GQA checkpoint), the same count a real circuit of this k has."""
    count = resolve_k(float(k) if "." in str(k) else int(k), n_layers * n_heads)
    heads = [[i % n_layers, (i // n_layers) % n_heads] for i in range(count)]
    return {"circuit": heads, "near_zero": heads, "random": heads}


# ---------------------------------------------------------------- bytes of each file format
def safetensors_bytes(tensors: Iterable[tuple[str, str, list[int]]], metadata: dict | None) -> int:
    """Size of a safetensors file: 8-byte length + JSON header (padded to 8) + the data."""
    itemsize = {"F32": 4, "I32": 4, "I64": 8, "BF16": 2, "F16": 2}
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape in tensors:
        size = itemsize[dtype] * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"))
    return 8 + len(text) + (-len(text)) % 8 + offset


def trained_tensors(plan: Any, hf: torch.nn.Module) -> tuple[list, dict]:
    """The tensors and metadata `ctsft.models.checkpoint.save_trained` writes for `plan`."""
    params = dict(hf.named_parameters())
    tensors, index = [], []
    for i, e in enumerate(plan.entries):
        shape = list(params[e.name].shape)
        if e.dim is not None:
            shape[e.dim] = e.stop - e.start
        tensors.append((f"s{i}", "F32", shape))
        index.append([f"s{i}", e.name, e.dim, e.start, e.stop])
    for i, s in enumerate(plan.scatter.entries if plan.scatter else []):
        idx = "I32" if params[s.name].numel() <= 2**31 - 1 else "I64"
        tensors += [(f"e{i}", "F32", [len(s.indices)]), (f"e{i}.idx", idx, [len(s.indices)])]
        index.append([f"e{i}", s.name, "entries", 0, 0])
    return tensors, {"ctsft_index": json.dumps(index)}


def lora_tensors(plan: Any, hf: torch.nn.Module) -> list[tuple[str, str, list[int]]]:
    """A PEFT adapter's tensors: lora_A [r, in] and lora_B [out, r] per target projection."""
    modules = dict(hf.named_modules())
    out = []
    for name in plan.lora_modules:
        m, r = modules[name], plan.lora_rank
        out.append((f"base_model.model.{name}.lora_A.weight", "F32", [r, m.in_features]))
        out.append((f"base_model.model.{name}.lora_B.weight", "F32", [m.out_features, r]))
    return out


def full_weights_bytes(hf: torch.nn.Module) -> int:
    """model.safetensors of `save_pretrained` (named_parameters lists a tied weight once)."""
    tensors = [(n, "F32", list(p.shape)) for n, p in hf.named_parameters()]
    return safetensors_bytes(tensors, {"format": "pt"})


def tokenizer_bytes(config: dict[str, Any], model: str) -> tuple[int, str]:
    """The tokenizer files of a full checkpoint: measured in models_dir/<model>/ when there."""
    folder = REPO / path("model_dir", M=config["models_dir"].rstrip("/"), model=model_slug(model))
    skip = {"model.safetensors", "config.json", "provenance.json", "generation_config.json"}
    files = [p for p in Path(folder).glob("*") if p.is_file() and p.name not in skip]
    if (Path(folder) / "model.safetensors").is_file() and files:
        return sum(p.stat().st_size for p in files), "measured"
    if model.startswith("tiny_"):
        return TINY_TOKENIZER_BYTES, "estimate"
    if model not in TOKENIZER_BYTES:
        raise SystemExit(f"error: no tokenizer size of {model}: prepare it once or add it here")
    return TOKENIZER_BYTES[model], "measured" if model in (
        "e5_small",
        "smollm2_135m",
    ) else "estimate"


# ---------------------------------------------------------------- the prediction
@dataclass
class Row:
    """One artifact kind: `count` files of `each` bytes; `temporary` ones are deleted by
    Snakemake after their consumers (keep_full_checkpoints: false)."""

    kind: str
    count: int
    each: int
    temporary: bool = False
    note: str = ""

    @property
    def total(self) -> int:
        return self.count * self.each


@dataclass
class Prediction:
    configfile: str
    model: str
    rows: list[Row] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)
    dry_run: dict[str, int] | None = None
    old_total: int = 0  # every transfer a full copy (before issue 21)
    models_dir: int = 0  # the base model folder (outside results_dir)
    full_checkpoint: int = 0

    @property
    def total(self) -> int:
        return sum(r.total for r in self.rows)

    @property
    def stays(self) -> int:
        return sum(r.total for r in self.rows if not r.temporary)


def checkpoint_bytes(
    variant: Variant, model: str, task: str, k: Any, freeze: bool, full: int
) -> tuple[int, str]:
    """(bytes, format) of one transfer checkpoint of `variant`."""
    hf = meta_model(model, len(TASKS[task].label_names))
    adapter = get_adapter(hf)
    geo = adapter.geometry
    circuit = fabricated_circuit(geo.n_layers, geo.n_heads, k) if variant.circuit else None
    method = {**variant.method, "seed": 0} if variant.method.get("seed") is not None else variant.method  # fmt: skip
    plan = build_plan(hf, adapter, method, circuit, freeze_embeddings=freeze)
    if plan.lora_rank is not None:
        size = safetensors_bytes(lora_tensors(plan, hf), {"format": "pt"})
        return size + ADAPTER_CONFIG_BYTES + RECORD_BYTES, f"lora r{plan.lora_rank}"
    whole = {e.name for e in plan.entries if e.dim is None}
    if plan.scatter is None and whole == {n for n, _ in hf.named_parameters()}:
        return full, "full"
    tensors, metadata = trained_tensors(plan, hf)
    pct = 100 * plan.trainable / plan.total
    return safetensors_bytes(tensors, metadata) + RECORD_BYTES, f"trained {pct:.2f}%"


def predict(configfile: str, sets: list[str], dry_run: bool = True) -> Prediction:
    config = effective_config(configfile, sets)
    model = str(config["model"])
    pred = Prediction(configfile + "".join(f" {s}" for s in sets), model)
    tokenizer, tok_note = tokenizer_bytes(config, model)
    keep_full = bool(config.get("keep_full_checkpoints", True))
    seeds = config["seeds"]
    proxies = list(dict.fromkeys((t, p) for t, p, _ in pairs(config)))
    all_variants = variants(config)
    extras = CONFIG_JSON_BYTES + RECORD_BYTES

    # the base model folder and theta_1 (per task: the classifier's size follows its labels)
    base = safetensors_bytes(base_model_tensors(model), {"format": "pt"}) + tokenizer + 1_600
    pred.rows.append(Row("base model (models_dir)", 1, base, note=f"tokenizer {tok_note}"))
    fulls = {t: full_weights_bytes(meta_model(model, len(TASKS[t].label_names))) + tokenizer + extras for t in TASKS}  # fmt: skip
    pred.full_checkpoint = max(fulls[t] for t, _ in proxies)
    pred.models_dir = base
    theta = sum(fulls[t] for t, _ in proxies)
    pred.rows.append(Row("theta_1", len(proxies), theta // len(proxies), note="full"))
    pred.old_total = base + sum(fulls[t] for t, _ in proxies)

    # one checkpoint per (pair, transfer variant, seed)
    jobs: Counter[str] = Counter()
    for variant in all_variants:
        runs = [(t, p, g) for t, p, g in pairs(config)]
        n_seeds = len(seeds) if variant.transfer else 1
        jobs["evaluation"] += len(runs) * n_seeds  # one metrics.json each
        if not variant.transfer:
            jobs["evaluate_as_is"] += len(runs)
            continue
        is_full_ft = variant.method.get("kind") == "all"
        temporary = is_full_ft and not keep_full
        jobs["transfer_temp" if temporary else "transfer"] += len(runs) * n_seeds
        by_task = Counter((t, p) for t, p, _ in runs)
        k = variant.name.split("/k", 1)[1] if "/k" in variant.name else None
        total, formats = 0, set()
        for (task, proxy), n in sorted(by_task.items()):  # the classifier's size follows the task
            freeze = freezes_embeddings(config, "transfer", task, proxy)
            each, fmt = checkpoint_bytes(variant, model, task, k, freeze, fulls[task])
            total += n * n_seeds * each
            formats.add(fmt)
            pred.old_total += n * n_seeds * fulls[task]
        count = len(runs) * n_seeds
        note = "/".join(sorted(formats))
        pred.rows.append(Row(f"transfer {variant.name}", count, total // count, temporary, note))
    n_transferred = sum(v.transfer for v in all_variants)
    jobs["evaluate"] = len(pairs(config)) * len(seeds) if n_transferred else 0  # per pair and seed
    pred.jobs = {rule: n for rule, n in jobs.items() if n}

    # small artifacts: mu, scores + heatmap, records, tables, logs (estimates)
    hf = meta_model(model, 3)
    geo = get_adapter(hf).geometry
    mu = safetensors_bytes([("mu", "F32", [geo.n_layers, geo.n_heads, geo.d_head])], {"shape": "[]"})  # fmt: skip
    scores = 60 * geo.n_layers * geo.n_heads + 80_000  # one TSV row per head + the heatmap PNG
    pred.rows.append(Row("mu + scores + heatmap", len(proxies), mu + 1_000 + scores))
    pred.dry_run = dry_run_counts(configfile, sets) if dry_run else None
    counts = pred.dry_run or dict(jobs)  # without snakemake: the transfers and evaluations only
    if pred.dry_run is not None:
        planned = counts.get("transfer", 0) + counts.get("transfer_temp", 0)
        mine = jobs["transfer"] + jobs["transfer_temp"]
        evaluations = (counts.get("evaluate", 0), counts.get("evaluate_as_is", 0))
        if planned != mine or evaluations != (jobs["evaluate"], jobs["evaluate_as_is"]):
            raise SystemExit(
                f"error: {configfile}: {mine} transfers / {jobs['evaluate']} + {jobs['evaluate_as_is']} evaluation jobs expanded "
                f"here, snakemake -n plans {planned} / {evaluations[0]} + {evaluations[1]}: update this script"
            )  # fmt: skip
    small = jobs["evaluation"] * METRICS_BYTES
    small += sum(counts.get(rule, 0) * size for rule, size in SMALL_OUTPUTS.items())
    n_jobs = sum(n for rule, n in counts.items() if rule != "all")
    small += n_jobs * (LOG_BYTES + BENCHMARK_BYTES)
    pred.rows.append(Row("records, tables, figures, logs", 1, small, note="estimate"))
    pred.old_total += small + len(proxies) * (mu + 1_000 + scores)
    return pred


# ---------------------------------------------------------------- measuring a finished run
def template_regex(template: str) -> re.Pattern[str]:
    """A layout template as a regex over a path relative to R ({variant} may hold `/k..`)."""
    body = template.removeprefix("{R}/").removeprefix("{root}/")
    out = ""
    for literal, name, _, _ in __import__("string").Formatter().parse(body):
        out += re.escape(literal)
        if name:
            out += "(?P<variant>[^/]+(?:/k[^/]+)?)" if name == "variant" else f"(?P<{name}>[^/]+)"
    return re.compile(out)


KIND_OF = {  # layout artifact -> the kind the prediction names it by
    "proxy_checkpoint": "theta_1",
    "checkpoint": "transfer",
    "mu": "mu + scores + heatmap",
    "scores": "mu + scores + heatmap",
    "heatmap": "mu + scores + heatmap",
}


def measure(results: Path) -> Counter[str]:
    """Bytes per artifact kind under `results`: a checkpoint file is counted under its folder's
    kind (theta_1, or transfer <variant>); every other file under the template it matches."""
    dir_templates = {a: template_regex(TEMPLATES[a]) for a in ("proxy_checkpoint", "checkpoint")}
    file_templates = {
        a: template_regex(t)
        for a, t in TEMPLATES.items()
        if a not in ("proxy_checkpoint", "checkpoint", "model_dir")
    }
    sizes: Counter[str] = Counter()
    for file in results.rglob("*"):
        if not file.is_file():
            continue
        rel = file.relative_to(results).as_posix()
        size = file.stat().st_size
        for artifact, regex in dir_templates.items():
            match = regex.match(rel)
            if match and rel[match.end() :].startswith("/"):
                what = f" {match['variant']}" if artifact == "checkpoint" else ""
                sizes[KIND_OF[artifact] + what] += size
                break
        else:
            hit = next((a for a, r in file_templates.items() if r.fullmatch(rel)), None)
            sizes[KIND_OF.get(hit, "records, tables, figures, logs")] += size
    return sizes


def measured_rows(pred: Prediction, results: Path, models: Path) -> list[tuple[str, int, int]]:
    """(kind, predicted, measured) side by side; the prediction's rows merged to the measured kinds."""
    sizes = measure(results)
    model_dir = models / model_slug(pred.model)
    sizes["base model (models_dir)"] = sum(
        p.stat().st_size for p in model_dir.rglob("*") if p.is_file()
    )
    predicted: Counter[str] = Counter()
    for row in pred.rows:
        kind = row.kind
        if kind.startswith("theta_1"):
            kind = "theta_1"
        elif kind.startswith("transfer "):
            kind = "transfer " + kind.split()[1]
        predicted[kind] += row.total
    kinds = list(dict.fromkeys([*predicted, *sizes]))
    return [(k, predicted.get(k, 0), sizes.get(k, 0)) for k in kinds]


# ---------------------------------------------------------------- printing
def human(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}" if unit in ("TB", "GB") else f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def print_prediction(pred: Prediction) -> None:
    print(f"\n## {pred.configfile} (model {pred.model})\n")
    if pred.dry_run:
        rules = " | ".join(f"{r} {n}" for r, n in pred.dry_run.items())
        print(f"jobs (snakemake -n): {rules} | total {sum(pred.dry_run.values())}\n")
    print("| artifact | files | each | total | note |\n|---|---:|---:|---:|---|")
    for row in pred.rows:
        note = row.note + (", temporary" if row.temporary else "")
        print(f"| {row.kind} | {row.count} | {human(row.each)} | {human(row.total)} | {note} |")
    temporary = [row for row in pred.rows if row.temporary]
    in_results = pred.stays - pred.models_dir
    print(
        f"\nstays after the run {human(pred.stays)} ({human(in_results)} in results_dir, the "
        f"rest the base model folder); written in total {human(pred.total)}"
        + (
            f": full fine-tuning's checkpoints ({human(pred.total - pred.stays)} in all, "
            f"{human(max(r.each for r in temporary))} each) are deleted once their evaluation "
            "(and mechanism) jobs are done, so the peak lies between the two: each exists from "
            "its transfer until its consumers finish"
            if temporary
            else ""
        )
        + f".\nbefore (every transfer a full copy): {human(pred.old_total)} "
        f"({human(pred.old_total - pred.models_dir)} in results_dir), "
        f"{pred.old_total / pred.stays:.1f}x what stays now"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configfiles", nargs="*", default=list(DEFAULT_RUNS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a --config value, e.g. keep_full_checkpoints=true")  # fmt: skip
    parser.add_argument("--measure", type=Path, metavar="RESULTS_DIR",
                        help="also sum the real sizes of this finished run (one configfile)")  # fmt: skip
    parser.add_argument("--no-dry-run", action="store_true", help="skip `snakemake -n`")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.measure and len(args.configfiles) != 1:
        parser.error("--measure needs exactly one configfile (the one the run used)")
    results: list[dict[str, Any]] = []
    for configfile in args.configfiles:
        pred = predict(configfile, args.set, dry_run=not args.no_dry_run)
        print_prediction(pred)
        figures = {
            "config": pred.configfile.replace(" ", ","),
            "predicted_gb": pred.total / 1e9,
            "stays_gb": pred.stays / 1e9,
            "old_gb": pred.old_total / 1e9,
            "results_dir_gb": (pred.stays - pred.models_dir) / 1e9,
            "jobs": sum((pred.dry_run or {}).values()),
        }
        if args.measure:
            config = effective_config(configfile, args.set)
            rows = measured_rows(pred, args.measure, REPO / config["models_dir"])
            print(
                "\n| artifact | predicted | measured | measured/predicted |\n|---|---:|---:|---:|"
            )
            for kind, want, got in rows:
                ratio = f"{got / want:.3f}" if want else "-"
                print(f"| {kind} | {human(want)} | {human(got)} | {ratio} |")
            total = sum(got for _, _, got in rows)
            print(f"\nmeasured in all {human(total)} (predicted {human(pred.stays)} staying)")
            figures["measured_gb"] = total / 1e9
        results.append(figures)
        print(
            "RESULT "
            + " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
            ),  # fmt: skip
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
