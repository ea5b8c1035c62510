"""The SLURM profiles against the installed snakemake-executor-plugin-slurm.

A dry run does not submit, so a profile the plugin rejects (GRES in `slurm_extra`, an unknown
option, a status query that needs slurmdbd) only fails on the cluster. These tests check every
file under workflow/profiles/slurm*/ with the plugin's own validation code and option list, and
build each job's sbatch options with the plugin's own functions from a dry run:

    pytest tests/test_slurm_profile.py

The real submission is tests/test_slurm_integration.py (a one-node slurmctld).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[dev]'")

from snakemake_executor_plugin_slurm.submit_string import get_submit_command  # noqa: E402
from snakemake_executor_plugin_slurm.utils import set_gres_string  # noqa: E402
from snakemake_executor_plugin_slurm.validation import (  # noqa: E402
    get_forbidden_slurm_options,
    validate_slurm_extra,
)
from snakemake_interface_common.exceptions import WorkflowError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PROFILE_FILES = sorted(
    p for p in (REPO / "workflow" / "profiles").glob("slurm*/**/*") if p.suffix in (".yaml", ".yml")
)
PROFILE_DIRS = sorted({p.parent for p in PROFILE_FILES if p.name == "config.yaml"})
RULE_FILES = sorted((REPO / "workflow" / "rules").glob("*.smk"))

# Resources Snakemake itself defines (snakemake.resources); the plugin's come from its source.
SNAKEMAKE_RESOURCES = {
    "mem_mb",
    "mem_mib",
    "mem",
    "disk_mb",
    "disk_mib",
    "disk",
    "runtime",
    "tmpdir",
}
# Resource blocks that override every rule's threads (the plugin then ignores `threads:`).
CPU_OVERRIDES = {"cpus_per_task", "cpus_per_gpu"}
DEFAULT_MIN_JOB_AGE = 300  # slurm.conf default: squeue sees a finished job this long

# workflow/profiles/slurm/config.yaml before issue 10: the negative case.
OLD_PROFILE = """
executor: slurm
jobs: 100
rerun-incomplete: true
printshellcmds: true
keep-going: true
latency-wait: 60
show-failed-logs: true
retries: 1
default-resources:
  slurm_partition: "<cpu-partition>"
  slurm_account: "<account>"
  mem_mb: 8000
  runtime: 60
  cpus_per_task: 4
set-resources:
  finetune:
    slurm_partition: "<gpu-partition>"
    slurm_extra: "'--gres=gpu:1'"
    mem_mb: 32000
    runtime: 480
  transfer:
    slurm_partition: "<gpu-partition>"
    slurm_extra: "'--gres=gpu:1'"
    mem_mb: 32000
    runtime: 480
  score_heads:
    slurm_partition: "<gpu-partition>"
    slurm_extra: "'--gres=gpu:1'"
    mem_mb: 32000
    runtime: 480
  mean_baseline:
    slurm_partition: "<gpu-partition>"
    slurm_extra: "'--gres=gpu:1'"
    mem_mb: 16000
  faithfulness:
    slurm_partition: "<gpu-partition>"
    slurm_extra: "'--gres=gpu:1'"
    mem_mb: 16000
    runtime: 240
  evaluate:
    slurm_partition: "<gpu-partition>"
    slurm_extra: "'--gres=gpu:1'"
    mem_mb: 16000
  evaluate_proxy:
    slurm_partition: "<gpu-partition>"
    slurm_extra: "'--gres=gpu:1'"
    mem_mb: 16000
set-threads:
  finetune: 8
  transfer: 8
  score_heads: 8
"""


# ---------------------------------------------------------------- what the plugin and workflow know
@cache
def cli_options() -> frozenset[str]:
    """Every long option of `snakemake` with the installed plugins (profile keys are these)."""
    from snakemake.cli import get_argument_parser

    parser = get_argument_parser()
    return frozenset(s[2:] for a in parser._actions for s in a.option_strings if s.startswith("--"))


@cache
def plugin_resources() -> frozenset[str]:
    """Resource names the SLURM plugin (and its jobstep plugin) read, parsed from their source."""
    names: set[str] = set()
    for module in ("snakemake_executor_plugin_slurm", "snakemake_executor_plugin_slurm_jobstep"):
        folder = Path(importlib.util.find_spec(module).origin).parent
        for source in folder.glob("*.py"):
            text = source.read_text()
            names |= set(re.findall(r"resources\.get\(\s*[\"'](\w+)[\"']", text))
            names |= set(re.findall(r"resources\[\s*[\"'](\w+)[\"']", text))
            names |= set(re.findall(r"resources\.(?!get\b|keys\b|items\b)(\w+)\b", text))
    names.discard("threads")  # a rule property, not a resource a profile may set
    assert {"slurm_partition", "slurm_account", "gpu", "gpu_model", "gres"} <= names, names
    return frozenset(names)


def rule_blocks() -> dict[str, str]:
    """{rule name: its text} of workflow/rules/*.smk (a rule may sit under an `if`, indented)."""
    blocks = {}
    for path in RULE_FILES:
        text = path.read_text()
        rule = r"^(?P<indent> *)rule (\w+):\n(.*?)(?=^(?P=indent)\S|\Z)"
        for match in re.finditer(rule, text, re.M | re.S):
            blocks[match.group(2)] = match.group(3)
        # `use rule a as b with:` inherits a's resources (transfer_temp: a GPU rule too)
        for match in re.finditer(
            r"^use rule (\w+) as (\w+) with:\n(.*?)(?=^\S|\Z)", text, re.M | re.S
        ):
            blocks[match.group(2)] = blocks.get(match.group(1), "") + match.group(3)
    return blocks


def gpu_rules() -> set[str]:
    return {name for name, text in rule_blocks().items() if re.search(r"^\s+gpu=", text, re.M)}


def localrules() -> set[str]:
    block = re.search(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", (REPO / "Snakefile").read_text(), re.M)
    assert block, "Snakefile has no localrules: block"
    return set(re.findall(r"(\w+)", block.group(1)))


class _Resources(dict):
    """The part of Snakemake's job.resources the plugin uses: .get() and attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def plugin_job(resources: dict, threads: int = 1, name: str = "job") -> SimpleNamespace:
    return SimpleNamespace(resources=_Resources(resources), threads=threads, name=name)


def sbatch_options(resources: dict, threads: int) -> str:
    """The sbatch call the plugin builds for a job with these resources (no --wrap)."""
    job = plugin_job(resources, threads)
    account = resources.get("slurm_account")
    params = {
        "run_uuid": "run",
        "slurm_logfile": "/tmp/%j.log",
        "comment_str": "rule",
        "account": f" -A {account}" if account else "",
        "partition": f" -p {resources['slurm_partition']}",
        "workdir": str(REPO),
    }
    validate_slurm_extra(job)
    return get_submit_command(job, params) + set_gres_string(job)


# ---------------------------------------------------------------- the checks
def problems(profile: dict, name: str = "slurm") -> list[str]:
    """What the installed plugin or the workflow would reject or misread in a SLURM profile."""
    found = []
    unknown = sorted(set(profile) - cli_options())
    if unknown:
        found.append(f"not a snakemake or plugin option: {', '.join(unknown)}")
    if profile.get("executor") != "slurm":
        found.append("executor is not slurm")

    rules = set(rule_blocks())
    blocks = [("default-resources", profile.get("default-resources") or {})]
    set_resources = profile.get("set-resources") or {}
    for rule in sorted(set(set_resources) | set(profile.get("set-threads") or {})):
        if rule not in rules:
            found.append(f"set-resources/set-threads of an unknown rule: {rule}")
    blocks += [(f"set-resources.{rule}", res or {}) for rule, res in set_resources.items()]
    known = plugin_resources() | SNAKEMAKE_RESOURCES | {"_cores", "_nodes"}
    for where, res in blocks:
        for key in sorted(set(res) - known):
            found.append(f"{where}: {key} is no resource Snakemake or the plugin knows")
        for key in sorted(set(res) & CPU_OVERRIDES):
            found.append(f"{where}: {key} replaces the rules' threads as the job's CPUs")
        job = plugin_job(res)
        for check in (validate_slurm_extra, set_gres_string):
            try:
                check(job)
            except WorkflowError as err:
                found.append(f"{where}: plugin rejects it: {err}")
        if res.get("gpu_model") and res.get("gpu", 1) == 0:
            found.append(f"{where}: gpu_model with gpu 0 asks for --gpus=<model>:0")
        if res.get("slurm_account") == "" or res.get("slurm_partition") == "":
            found.append(f"{where}: empty partition/account: delete the line instead")

    # status queries that work without slurmdbd (see the comment in the profile)
    if profile.get("slurm-status-command") != "squeue":
        found.append("slurm-status-command is not squeue: sacct polls fail without slurmdbd")
    init = profile.get("slurm-init-seconds-before-status-checks", 40)
    if not isinstance(init, int) or init < 1 or 3 * init > DEFAULT_MIN_JOB_AGE:
        found.append(
            "slurm-init-seconds-before-status-checks must be 1..100: above, the plugin "
            "falls back to sacct at the default MinJobAge"
        )

    # GPUs go through the rules' `gpu` resource; a CPU profile sets it to 0 on every such rule
    if "cpu" in name:
        for rule in sorted(gpu_rules()):
            res = set_resources.get(rule) or {}
            if res.get("gpu") != 0 or res.get("gpu_model") or res.get("gres"):
                found.append(f"CPU profile: set-resources.{rule} must set gpu: 0 and no GPU type")
    return found


def load(path: Path) -> dict:
    profile = yaml.safe_load(path.read_text())
    assert isinstance(profile, dict), f"{path}: not a YAML mapping"
    return profile


def test_there_are_a_gpu_and_a_cpu_profile():
    names = {d.name for d in PROFILE_DIRS}
    assert {"slurm", "slurm-cpu"} <= names, names


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_profile_passes_the_plugin_checks(path):
    found = problems(load(path), path.parent.name)
    assert not found, f"{path.relative_to(REPO)}:\n  " + "\n  ".join(found)


def test_old_profile_is_rejected():
    """The profile before issue 10: the plugin refuses its GRES, and CPUs ignore threads."""
    found = "\n".join(problems(yaml.safe_load(OLD_PROFILE)))
    assert "generic resources (GRES) is set by the snakemake executor plugin" in found
    assert "default-resources: cpus_per_task replaces the rules' threads" in found
    assert "slurm-status-command is not squeue" in found


def test_forbidden_options_come_from_the_plugin():
    """The GRES check above is the plugin's own list, which includes --gres and --gpus."""
    names = set(get_forbidden_slurm_options().values())
    assert {"generic resources (GRES)", "GPU allocation", "CPUs per task"} <= names


def test_prepare_model_runs_on_the_submit_host():
    assert {"prepare_model", "tables", "figures", "all"} <= localrules()


# ---------------------------------------------------------------- the sbatch options of a dry run
def rule_threads(rule: str, config_threads: int) -> int:
    """A rule's `threads:` (an integer or config["threads"])."""
    match = re.search(r"^\s+threads: (.+)$", rule_blocks()[rule], re.M)
    if not match:
        return 1
    value = match.group(1).strip()
    return config_threads if value == 'config["threads"]' else int(value)


def dry_run_jobs(profile: Path, tmp_path: Path) -> list[tuple[str, dict]]:
    """(rule, resources) of every job of the tiny DAG planned with `profile`."""
    proc = subprocess.run(
        [
            SNAKEMAKE,
            "-n",
            "--workflow-profile",
            str(profile),
            "--configfile",
            "config/tiny.yaml",
            "--config",
            f"results_dir={tmp_path}/r",
            f"models_dir={tmp_path}/m",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", out)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        res_line = re.search(r"^\s+resources: (.*)$", block, re.M)
        resources = {}
        for item in res_line.group(1).split(", ") if res_line else []:
            key, value = item.split("=", 1)
            if value != "<TBD>":
                resources[key] = int(value) if value.isdigit() else value
        jobs.append((rule, resources))
    assert jobs, out[-4000:]
    return jobs


@pytest.mark.parametrize("profile", PROFILE_DIRS, ids=lambda p: p.name)
def test_dry_run_sbatch_options(profile, tmp_path):
    """Each job's sbatch call, as the plugin builds it: GPUs by profile, CPUs = threads."""
    threads = 3  # what the plugin asks for a rule with `threads: config["threads"]` = 3
    gpus, local = gpu_rules(), localrules()
    jobs = dry_run_jobs(profile, tmp_path)
    assert {rule for rule, _ in jobs} - local, "no job would be submitted"
    for rule, res in jobs:
        if rule in local:
            continue
        assert "slurm_partition" in res, (rule, res)
        wanted = rule_threads(rule, threads)
        call = sbatch_options(res, wanted)
        assert f"--cpus-per-task={wanted}" in call, (rule, call)
        assert "--mem " in call and " -t " in call and " -p " in call, (rule, call)
        if rule in gpus and profile.name == "slurm":
            assert "--gpus=1" in call and "--ntasks" not in call, (rule, call)
        else:
            assert "--gpus" not in call and "--gres" not in call, (rule, call)
            assert "--ntasks=1" in call, (rule, call)


# ---------------------------------------------------------------- job grouping (--profile grouped)
GROUPED = REPO / "workflow" / "profiles" / "grouped"


def test_grouped_profile_names_the_per_pair_rules():
    """Its groups name rules that exist, the GPU rules of a transfer chain among them (a rule
    missing from `groups` would be submitted alone, silently)."""
    profile = load(GROUPED / "config.yaml")
    assert set(profile) <= cli_options(), sorted(set(profile) - cli_options())
    groups = profile["groups"]
    assert set(groups) <= set(rule_blocks()), sorted(set(groups) - set(rule_blocks()))
    assert {"transfer", "transfer_temp", "evaluate", "mechanism"} <= set(groups)
    assert set(profile["group-components"]) == set(groups.values())
    # one job's memory per group: the chains run in series, never summed past a node
    biggest = max(int(m) for m in re.findall(r"mem_mb=(\d+)", "".join(rule_blocks().values())))
    assert profile["resources"]["mem_mb"] >= biggest


def test_grouped_dry_run_submits_fewer_jobs(tmp_path):
    """The tiny DAG through slurm-cpu + grouped: the 4 chains of (target, seed) (3 transfers,
    their evaluate job, CT-SFT's mechanism job) and the 2 zero-shot evaluations, 4 components
    per group job, so 2 group jobs; the per-proxy jobs alone (tests/test_slurm_integration.py
    submits it for real)."""
    args = [
        SNAKEMAKE, "-n", "--workflow-profile", str(REPO / "workflow/profiles/slurm-cpu"),
        "--profile", str(GROUPED), "--configfile", "config/tiny.yaml",
        "--default-resources", "slurm_partition=p", "--config",
        f"results_dir={tmp_path}/r", f"models_dir={tmp_path}/m",
    ]  # fmt: skip
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert out.count("Group job chain (jobs in lexicogr. order):") == 2, out[-3000:]
    grouped = [r.removesuffix("_temp") for r in re.findall(r"^    rule (\w+):$", out, re.M)]
    chains = ["transfer"] * 3 + ["evaluate"] + ["mechanism"]
    assert sorted(grouped) == sorted(chains * 4 + ["evaluate_as_is"] * 2), grouped
    alone = set(re.findall(r"^rule (\w+):$", out, re.M)) - localrules()
    assert alone == {"finetune", "evaluate_proxy", "mean_baseline", "score_heads", "select_circuit", "faithfulness"}  # fmt: skip
