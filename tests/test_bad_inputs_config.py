"""Bad input at the config and command level: each gives one line naming the key or file and what
to do, and leaves nothing half-written behind.

Config check and schema (ctsft.workflow_config, what the Snakefile and common.smk call), values
checked when a step's config is composed (ctsft.config), the step CLI (`--help`, resource faults
in ctsft.cli and workflow/scripts/run_step.py), a checkpoint without its training record, the data
root and `model=hub:<org>/<name>`.
"""

from __future__ import annotations

import copy
import errno
import importlib
import json
import os
import re
import runpy
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from ctsft import workflow_config as wc
from ctsft.cli import OOM_HINT, run_step
from ctsft.config import compose
from ctsft.errors import CtsftError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
STEPS = sorted(
    p.stem for p in (REPO / "src" / "ctsft" / "steps").glob("*.py") if p.stem != "__init__"
)


def quick() -> dict:
    return yaml.safe_load((REPO / "config" / "quick.yaml").read_text())


def config_error(cfg: dict, schema_only: bool = False) -> str:
    """The one-line message of the Snakefile's schema check, then common.smk's config check."""
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError) as err:
        wc.validate_config(cfg, SCHEMA)  # casts and fills in the defaults, as in the Snakefile
        if not schema_only:
            wc.check_config(cfg)
    message = str(err.value)
    assert "\n" not in message.strip(), message
    assert "is not valid under any of the given schemas" not in message
    return message


def dry_run(tmp_path: Path, *config: str, configfile: str = "config/tiny.yaml"):
    return subprocess.run(
        [SNAKEMAKE, "-n", "--configfile", configfile, "--config",
         f"results_dir={tmp_path}/r", f"models_dir={tmp_path}/m", *config],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HTTPS_PROXY": "http://127.0.0.1:9"},
    )  # fmt: skip


def assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "r").exists() and not (tmp_path / "m").exists()


def assert_short_refusal(tmp_path: Path, config: str, message: str) -> None:
    """A dry run with `--config <config>` fails before any job, with `message` in a few lines."""
    proc = dry_run(tmp_path, config)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in out
    assert len(out.strip().splitlines()) < 10, out
    assert_nothing_written(tmp_path)


# ---------------------------------------------------------------- config check (common.smk)
def test_a_target_equal_to_its_proxy_is_rejected():
    cfg = quick()
    cfg["experiments"] = [{"task": "nusax", "proxy": "ind", "targets": ["jav", "ind"]}]
    assert config_error(cfg) == (
        "config: experiments[0] (nusax, proxy ind): target ind is the proxy itself; remove it "
        "from targets (targets: all means every language but the proxy)"
    )


def test_targets_all_still_means_every_language_but_the_proxy(tmp_path):
    proc = dry_run(
        tmp_path, "experiments=[{task: nusax, proxy: ind, targets: all}]", "--quiet", "rules"
    )
    assert proc.returncode == 0, proc.stderr
    transfers = re.search(r"^transfer\s+(\d+)$", proc.stdout + proc.stderr, re.M)
    assert transfers and int(transfers.group(1)) == 11 * 3 * 2  # targets x 3 trained x 2 seeds


def test_target_equal_to_proxy_stops_snakemake_before_any_job(tmp_path):
    assert_short_refusal(
        tmp_path,
        "experiments=[{task: nusax, proxy: ind, targets: [ind]}]",
        "config: experiments[0] (nusax, proxy ind): target ind is the proxy itself",
    )


def test_an_unknown_target_language_is_rejected():
    cfg = quick()
    cfg["experiments"][0]["targets"] = ["jav", "xx"]
    with pytest.raises(
        Exception, match="experiments\\[0\\].targets\\[1\\] is 'xx', expected one of ace"
    ):
        wc.validate_config(cfg, SCHEMA)
    # and the config check says it too, should the schema ever be loosened
    cfg["experiments"][0]["targets"] = ["jav", "xx"]
    with pytest.raises(Exception, match="unknown target xx, choose from ace, ban"):
        wc.check_config(cfg)


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            {"name": "mine", "overrides": ["train.lr=1e-4"]},
            "config: method variant 'mine' has no method=<ctsft|full_ft|lora|near_zero|"
            "norms_only|random_heads|sparse_random|zero_shot> in its overrides: add one",
        ),
        (
            {"name": "mine", "overrides": ["method=ctsf"]},
            "config: method variant 'mine': unknown method=ctsf, choose one of ctsft, full_ft, "
            "lora, near_zero, norms_only, random_heads, sparse_random, zero_shot",
        ),
        (
            {"name": "full", "circuit": True, "overrides": ["method=full_ft"]},
            "config: method variant 'full' (method=full_ft) reads no circuit: drop circuit: true",
        ),
        (
            {"name": "zs", "overrides": ["method=zero_shot"]},
            "config: method variant 'zs' (method=zero_shot): add transfer: false",
        ),
        (
            {"name": "ft", "transfer": False, "overrides": ["method=full_ft"]},
            "config: method variant 'ft' (method=full_ft): drop transfer: false (only zero_shot "
            "has no transfer)",
        ),
    ],
    ids=["no-method", "unknown-method", "circuit-without-use", "zero-shot-transfer", "no-transfer"],
)
def test_incomplete_method_variants_are_rejected(spec, message):
    cfg = quick()
    cfg["methods"] = [spec]
    assert config_error(cfg) == message


@pytest.mark.parametrize("method", ["ctsft", "near_zero", "random_heads", "lora"])
def test_a_head_method_without_circuit_true_is_rejected(method):
    cfg = quick()
    cfg["methods"] = [{"name": "mine", "overrides": [f"method={method}"]}]
    assert config_error(cfg) == (
        f"config: method variant 'mine' (method={method}) trains selected heads or matches "
        "their budget: add circuit: true"
    )


def test_lora_with_its_own_rank_needs_no_circuit():
    cfg = quick()
    cfg["methods"] = [{"name": "lora8", "overrides": ["method=lora", "method.rank=8"]}]
    wc.validate_config(cfg, SCHEMA)
    wc.check_config(cfg)


def test_the_circuit_methods_follow_the_training_code():
    from ctsft.train.methods import HEAD_METHODS, METHODS

    assert set(wc.CIRCUIT_METHODS) == {*HEAD_METHODS, "lora", "sparse_random"}
    assert set(wc.method_names()) == set(METHODS)


def test_repeated_method_names_and_unknown_models_are_rejected():
    cfg = quick()
    cfg["methods"].append(dict(cfg["methods"][0]))
    assert config_error(cfg) == "config: method names must be unique, repeated: zero_shot"
    cfg = quick()
    cfg["model"] = "e5_smal"
    assert config_error(cfg).startswith("config: unknown model 'e5_smal': choose one of e5_small")
    cfg["model"] = "hub:Qwen"
    assert config_error(cfg) == "config: model 'hub:Qwen': a hub model is hub:<org>/<name>"


# ---------------------------------------------------------------- schema (Snakefile)
@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda c: c["experiments"][0].update(proxy="klingon"),
            "config: experiments[0].proxy is 'klingon', expected one of ace, ban, bbc, bjn, bug, "
            "eng, ind, jav, mad, min, nij, sun",
        ),
        (
            lambda c: c["experiments"][0].update(targets="jav"),
            "config: experiments[0].targets is 'jav', expected 'all' or a list of strings with "
            "at least 1 item(s)",
        ),
        (
            lambda c: c["wandb"].update(mode="onlin"),
            "config: wandb.mode is 'onlin', expected one of disabled, offline, online",
        ),
        (lambda c: c.update(seeds="0"), "config: seeds is '0', expected a list of integers >= 0 with at least 1 item(s)"),
        (lambda c: c.update(seeds=[-1]), "config: seeds[0] is -1, expected an integer >= 0"),
        (lambda c: c.update(ks=[0]), "config: ks[0] is 0, expected a number > 0"),
        (lambda c: c.update(threads=0), "config: threads is 0, expected an integer >= 1"),
        (
            lambda c: c["methods"][0].update(circuit="maybe"),
            "config: methods[0].circuit is 'maybe', expected a boolean",
        ),
        (
            lambda c: c["hydra_overrides"].update(finetune=["trainlr"]),
            "config: hydra_overrides.finetune[0] is 'trainlr', expected a Hydra override key=value",
        ),
        (
            lambda c: c.update(k=c.pop("ks")),
            "config: the key k was renamed ks (Snakemake's --config cannot set one-letter keys): "
            "write ks: [0.05]",
        ),
    ],
    ids=["enum", "one-of", "nested-enum", "type", "minimum", "exclusive-minimum", "threads",
         "boolean", "pattern", "old-key-k"],
)  # fmt: skip
def test_schema_errors_are_one_line_naming_key_and_allowed_values(mutate, message):
    cfg = quick()
    cfg["wandb"] = dict(cfg["wandb"])
    mutate(cfg)
    assert config_error(cfg, schema_only=True) == message


def test_a_typo_names_the_allowed_keys():
    cfg = quick()
    cfg["seedz"] = cfg.pop("seeds")
    message = config_error(cfg, schema_only=True)
    assert message.startswith(
        "config: Additional properties are not allowed ('seedz' was unexpected) at the top "
        "level; allowed keys: claims, compare, data_root, experiments,"
    )
    assert "seeds" in message


def test_command_line_list_items_are_read_as_the_schema_types():
    cfg = quick()
    # what `--config 'seeds=[0,1]' 'ks=[5,0.1]' 'methods=[{..., circuit: true}]'` gives
    cfg.update(seeds=["0", "1"], ks=["5", "0.1"], proxy_seed="1")
    cfg["methods"] = [{"name": "c", "circuit": "true", "overrides": ["method=ctsft"]}]
    cfg["experiments"] = [{"task": "nusax", "proxy": "ind", "targets": ["jav"]}]
    wc.validate_config(cfg, SCHEMA)
    assert cfg["seeds"] == [0, 1] and cfg["ks"] == [5, 0.1] and cfg["proxy_seed"] == 1
    assert cfg["methods"][0]["circuit"] is True and cfg["experiments"][0]["targets"] == ["jav"]


def test_a_schema_error_in_snakemake_is_short(tmp_path):
    assert_short_refusal(
        tmp_path,
        "wandb={mode: onlin}",
        "config: wandb.mode is 'onlin', expected one of disabled, offline, online",
    )


# ---------------------------------------------------------------- values checked at compose time
@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=0", "bad config value train.lr=0: expected a number > 0"),
        ("train.lr=fast", "bad config value train.lr='fast': expected a number > 0"),
        ("train.epochs=-1", "bad config value train.epochs=-1: expected an integer >= 0"),
        ("train.batch_size=0", "bad config value train.batch_size=0: expected an integer >= 1"),
        ("train.eval_batch_size=0", "bad config value train.eval_batch_size=0: expected an integer >= 1"),
        ("train.max_length=1", "bad config value train.max_length=1: expected an integer >= 2"),
        ("train.schedule=cosin", "bad config value train.schedule='cosin': expected one of linear, constant, cosine"),
        ("train.warmup_ratio=1.5", "bad config value train.warmup_ratio=1.5: expected a number in [0, 1]"),
        ("cdt.k=0", "bad config value cdt.k=0: expected a head count (an integer >= 1) or a fraction in (0, 1]"),
        ("cdt.k=1.5", "bad config value cdt.k=1.5: expected a head count (an integer >= 1) or a fraction in (0, 1]"),
        ("cdt.n_per_label=0", "bad config value cdt.n_per_label=0: expected an integer >= 1"),
        ("cdt.head_batch=0", "bad config value cdt.head_batch=0: expected an integer >= 1"),
        ("cdt.batch_size=0", "bad config value cdt.batch_size=0: expected an integer >= 1"),
        ("cdt.score=margin", "bad config value cdt.score='margin': expected one of directional, cdt_ratio, ablation, attribution"),
        ("cdt.convention=authors", "bad config value cdt.convention='authors': expected one of reference, simple"),
        ("cdt.pooling=mean", "bad config value cdt.pooling='mean': expected one of all, last, first, position"),
        ("task.eval_size=-5", "bad config value task.eval_size=-5: expected null or an integer >= 0"),
        ("task.train_size=-1", "bad config value task.train_size=-1: expected null or an integer >= 0"),
    ],
)  # fmt: skip
def test_out_of_range_values_fail_when_composed(override, message):
    with pytest.raises(CtsftError) as err:
        compose([override])
    assert str(err.value) == message


def test_in_range_values_compose():
    cfg = compose(
        ["train.lr=1e-4", "cdt.k=5", "cdt.k=0.05", "task.eval_size=null", "train.epochs=0"]
    )
    assert cfg.train.lr == 1e-4 and cfg.cdt.k == 0.05 and cfg.task.eval_size is None


def test_the_allowed_values_follow_the_code_that_reads_them():
    from ctsft import config
    from ctsft.cdt.baseline import POOLINGS
    from ctsft.cdt.rules import CDTOptions
    from ctsft.facts import SCORE_KINDS
    from ctsft.train.loop import _SCHEDULES

    assert config.SCHEDULES == tuple(_SCHEDULES) and config.SCORES == SCORE_KINDS
    assert config.POOLINGS == POOLINGS
    from ctsft.cdt.rules import CDT_PATHS

    assert config.CDT_PATHS == CDT_PATHS
    for convention in config.CONVENTIONS:
        CDTOptions(convention=convention)
    with pytest.raises(ValueError):
        CDTOptions(convention="other")


def test_a_bad_value_on_the_step_command_line_is_one_line(capsys):
    from ctsft.steps import select_circuit

    assert run_step(select_circuit.run, ["cdt.k=-1", "io.scores=x", "io.circuit=y"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: bad config value cdt.k=-1: expected a head count (an integer >= 1) or a "
        "fraction in (0, 1]\n"
    )


# ---------------------------------------------------------------- hub models
def test_a_hub_model_composes():
    cfg = compose(["model=hub:Qwen/Qwen2.5-0.5B", "task=xnli"])
    assert cfg.model.name == "hub:Qwen/Qwen2.5-0.5B" and cfg.model.kind == "causal"
    from ctsft.models import get_model_spec

    spec = get_model_spec(cfg.model.name)
    assert spec.source == "hub" and spec.hub_id == "Qwen/Qwen2.5-0.5B" and not spec.offline


@pytest.mark.parametrize(
    "override, message",
    [
        ("model=hub", "model=hub needs a hub id: pass model=hub:<org>/<name>"),
        ("model=hub:Qwen", "model 'hub:Qwen': a hub model is hub:<org>/<name>"),
    ],
)
def test_a_malformed_hub_model_is_one_line(override, message):
    with pytest.raises(CtsftError) as err:
        compose([override])
    assert str(err.value) == message


def test_print_config_of_a_hub_model():
    proc = subprocess.run(
        [sys.executable, "-m", "ctsft.steps.finetune", "model=hub:Qwen/Qwen2.5-0.5B", "--print-config"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["model"]["name"] == "hub:Qwen/Qwen2.5-0.5B"


def test_a_hub_model_plans_without_downloading(tmp_path):
    proc = dry_run(tmp_path, "model=hub:Qwen/Qwen2.5-0.5B")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"{tmp_path}/m/hub--Qwen--Qwen2.5-0.5B" in out
    assert f"{tmp_path}/r/nusax/hub--Qwen--Qwen2.5-0.5B/ind/proxy_checkpoint" in out
    assert_nothing_written(tmp_path)


def test_model_slug():
    assert wc.model_slug("hub:Qwen/Qwen2.5-0.5B") == "hub--Qwen--Qwen2.5-0.5B"
    assert wc.model_slug("e5_small") == "e5_small"


# ---------------------------------------------------------------- data root
def test_the_data_root_is_resolved_from_config_then_env_then_default(tmp_path, monkeypatch):
    monkeypatch.delenv("CTSFT_DATA_ROOT", raising=False)
    default = str((REPO.parent / "shared" / "data").resolve())
    assert wc.resolve_data_root(None) == default
    monkeypatch.setenv("CTSFT_DATA_ROOT", str(tmp_path / "env"))
    assert wc.resolve_data_root(None) == str(tmp_path / "env")
    assert wc.resolve_data_root(str(tmp_path / "cfg")) == str(tmp_path / "cfg")
    monkeypatch.chdir(tmp_path)
    assert wc.resolve_data_root("rel") == str(tmp_path / "rel")  # absolute: a param that moves


def test_every_data_step_gets_the_resolved_data_root():
    """common.smk passes data.root=<absolute> to every step that reads data (a params change)."""
    text = (REPO / "workflow" / "rules" / "common.smk").read_text()
    common = text[text.index("def _common(") :].split("\ndef ", 1)[0]
    assert 'f"data.root={hydra_quote(DATA_ROOT)}"' in common
    assert 'DATA_ROOT = resolve_data_root(config.get("data_root"))' in text


# ---------------------------------------------------------------- step CLI
@pytest.mark.parametrize("step", STEPS)
def test_every_step_prints_usage_on_help(step, capsys):
    module = importlib.import_module(f"ctsft.steps.{step}")
    if not hasattr(module, "run"):  # tables, figures: argparse (--out DIR metrics...)
        with pytest.raises(SystemExit) as done:
            module.main(["--help"])
        assert done.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: python -m ctsft.steps.{step} [-h] --out")
        return
    assert run_step(module.run, ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m ctsft.steps.{step} [key=value ...] [--print-config]\n")
    assert module.__doc__.strip().splitlines()[0] in out and "--print-config prints" in out


def test_help_from_the_command_line():
    proc = subprocess.run(
        [sys.executable, "-m", "ctsft.steps.evaluate", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("usage: python -m ctsft.steps.evaluate [key=value ...]")


def _raising(exc: BaseException):
    def step(cfg):
        raise exc

    return step


@pytest.mark.parametrize(
    "exc, message",
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/r/x/.metrics.json.ab12cd_3.tmp"),
            "no space left on device writing /r/x/metrics.json: free space or set results_dir",
        ),
        (
            OSError(errno.EROFS, "Read-only file system", "/r/x"),
            "read-only file system: cannot write /r/x: set results_dir to a writable folder",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/r/x"),
            "permission denied: /r/x: make it writable or set results_dir elsewhere",
        ),
        (MemoryError(), OOM_HINT),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), OOM_HINT),
    ],
    ids=["enospc", "erofs", "eacces", "memory", "torch-oom"],
)
def test_resource_faults_are_one_line(exc, message, capsys):
    assert run_step(_raising(exc), ["threads=1"]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_out_of_memory_names_the_batch_keys():
    assert OOM_HINT == (
        "out of memory: lower train.batch_size / train.eval_batch_size / cdt.head_batch / "
        "cdt.batch_size"
    )


def test_other_os_errors_keep_their_traceback():
    with pytest.raises(FileNotFoundError):
        run_step(_raising(FileNotFoundError(errno.ENOENT, "No such file", "/x")), [])


def _write_scores(path: Path) -> None:
    from ctsft.artifacts import write_scores
    from ctsft.cdt.scores import scores_table

    write_scores(path, scores_table(torch.arange(8.0).reshape(2, 4), 4, "directional"))


def test_disk_full_during_a_real_step_leaves_nothing_half_written(tmp_path, monkeypatch, capsys):
    from ctsft.steps import select_circuit

    scores, circuit = tmp_path / "scores.tsv", tmp_path / "k2" / "circuit.json"
    _write_scores(scores)
    real_write_text = Path.write_text

    def full_disk(self, data, *args, **kwargs):
        real_write_text(self, data[:10], *args, **kwargs)  # part of it lands, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full_disk)
    code = run_step(select_circuit.run, ["cdt.k=2", f"io.scores={scores}", f"io.circuit={circuit}"])
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: no space left on device writing {circuit}: free space or set results_dir\n"
    )
    assert list(circuit.parent.iterdir()) == []  # neither circuit.json nor its temporary


def _run_step_script(
    tmp_path: Path, step_module: types.ModuleType, capfd, **params: object
) -> tuple[int, str, str]:
    """workflow/scripts/run_step.py as Snakemake runs it, on a fake step (`params`: more rule
    params, e.g. `runs`); (rc, stderr, log)."""
    sys.modules[f"ctsft.steps.{step_module.__name__}"] = step_module
    log = tmp_path / "job.log"
    params = {"overrides": ["cdt.k=2"], **params}
    job = types.SimpleNamespace(
        params=types.SimpleNamespace(step=step_module.__name__, **params),
        input={"scores": str(tmp_path / "scores.tsv")},
        output={"circuit": str(tmp_path / "circuit.json")},
        threads=1,
        log=[str(log)],
    )
    script = runpy.run_path(
        str(REPO / "workflow" / "scripts" / "run_step.py"),
        init_globals={"snakemake": job},
        run_name="run_step",
    )
    try:
        code = script["main"]()
    finally:
        del sys.modules[f"ctsft.steps.{step_module.__name__}"]
    return code, capfd.readouterr().err, log.read_text()


def test_the_workflow_script_reports_disk_full_in_one_line(tmp_path, capfd):
    fake = types.ModuleType("fake_disk_full")
    fake.run = _raising(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "c")))
    code, err, log = _run_step_script(tmp_path, fake, capfd)
    assert code == 2
    assert err == (
        f"error: no space left on device writing {tmp_path / 'c'}: free space or set "
        f"results_dir (log: {tmp_path / 'job.log'})\n"
    )
    assert "Traceback" in log and log.rstrip().endswith("free space or set results_dir")
    assert not (tmp_path / "circuit.json").exists()


def _wrapped_disk_full(path: str) -> Exception:
    """torch.save's wording of a full disk: its own RuntimeError, raised from the OSError."""
    try:
        raise OSError(errno.ENOSPC, "No space left on device", path)
    except OSError as err:
        try:
            raise RuntimeError("[enforce fail at inline_container.cc:595] unexpected pos") from err
        except RuntimeError as wrapped:
            return wrapped


@pytest.mark.parametrize(
    "exc, shown",
    [
        (lambda p: _wrapped_disk_full(p), "{p}"),
        (lambda p: RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), "the output"),
    ],
    ids=["torch-save", "safetensors"],
)  # fmt: skip
def test_a_wrapped_disk_full_is_named_in_the_terminal_line(tmp_path, capfd, exc, shown):
    fake = types.ModuleType("fake_wrapped_disk_full")
    fake.run = _raising(exc(str(tmp_path / "c")))
    code, err, log = _run_step_script(tmp_path, fake, capfd)
    where = shown.format(p=tmp_path / "c")
    assert code == 2
    assert err == (
        f"error: no space left on device writing {where}: free space or set results_dir "
        f"(log: {tmp_path / 'job.log'})\n"
    )
    assert "Traceback" in log
    assert run_step(fake.run, ["threads=1"]) == 2  # and by hand
    assert capfd.readouterr().err.startswith("error: no space left on device writing")


def test_an_output_path_that_is_a_directory_is_one_line(tmp_path, capsys):
    from ctsft.steps import select_circuit

    scores, circuit = tmp_path / "scores.tsv", tmp_path / "circuit.json"
    _write_scores(scores)
    circuit.mkdir()  # a folder where the step writes its file
    code = run_step(select_circuit.run, ["cdt.k=2", f"io.scores={scores}", f"io.circuit={circuit}"])
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: {circuit} is a directory where a file is to be written: remove or rename it\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["circuit.json", "scores.tsv"]


def test_the_workflow_script_reports_out_of_memory_in_one_line(tmp_path, capfd):
    fake = types.ModuleType("fake_oom")
    fake.run = _raising(torch.OutOfMemoryError("CUDA out of memory"))
    code, err, _ = _run_step_script(tmp_path, fake, capfd)
    assert code == 2 and err == f"error: {OOM_HINT} (log: {tmp_path / 'job.log'})\n"


def test_the_workflow_script_keeps_other_tracebacks_in_the_log(tmp_path, capfd):
    fake = types.ModuleType("fake_bug")
    fake.run = _raising(KeyError("oops"))
    code, err, log = _run_step_script(tmp_path, fake, capfd)
    assert code == 1
    assert err == f"error: step fake_bug failed, traceback in {tmp_path / 'job.log'}\n"
    assert "KeyError: 'oops'" in log


# ---------------------------------------------------------------- a checkpoint without its record
def _evaluate(checkpoint: Path, metrics: Path, method: str = "full_ft"):
    from ctsft.steps import evaluate

    cfg = compose(
        ["model=tiny_bert", f"method={method}", "train=tiny", "task.eval_size=6", "threads=1",
         f"io.checkpoint={checkpoint}", f"io.metrics={metrics}"]
    )  # fmt: skip
    return evaluate.run(cfg)


@pytest.mark.parametrize("method, rerun", [("full_ft", "transfer"), ("zero_shot", "finetune")])
def test_a_checkpoint_without_task_model_json_is_refused(tiny_model_dirs, tmp_path, method, rerun):
    # a base model folder (or a checkpoint copied without task_model.json) is no training output
    base = tiny_model_dirs["tiny_bert"]
    metrics = tmp_path / "metrics.json"
    with pytest.raises(CtsftError) as err:
        _evaluate(base, metrics, method)
    assert str(err.value) == (
        f"{base} has no training record (task_model.json): not a finished checkpoint; rerun "
        f"the {rerun} (snakemake <its metrics.json> --forcerun {rerun})"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_task_model_json_without_training_record_is_refused(tiny_model_dirs, tmp_path):
    from ctsft.models import load_task_model

    checkpoint = tmp_path / "checkpoint"
    load_task_model(tiny_model_dirs["tiny_bert"], "nusax", kind="encoder").save(checkpoint)
    assert "training" not in json.loads((checkpoint / "task_model.json").read_text())
    with pytest.raises(CtsftError, match="has no training record .*rerun the transfer"):
        _evaluate(checkpoint, tmp_path / "metrics.json")
    assert not (tmp_path / "metrics.json").exists()


def test_unchanged_quick_config_is_still_valid():
    cfg = copy.deepcopy(quick())
    wc.validate_config(cfg, SCHEMA)
    wc.check_config(cfg)
    assert cfg["data_root"] is None and cfg["report"] == {
        "faithfulness": True,
        "mechanism": True,
    }  # defaults


# ---------------------------------------------------------------- typed values (ctsft.config_schema)
@pytest.mark.parametrize(
    "overrides, key, value",
    [
        (["method.train_norms=no"], "method.train_norms", False),
        (["method=near_zero", "method.train_norms=off"], "method.train_norms", False),
        (["method=full_ft", "model.freeze_embeddings=no"], "model.freeze_embeddings", False),
        (["model.freeze_embeddings=yes"], "model.freeze_embeddings", True),
        (["train.early_stopping=yes"], "train.early_stopping", True),
        (["train.deterministic=false"], "train.deterministic", False),
        (["cdt.correct_only=no"], "cdt.correct_only", False),
    ],
)
def test_booleans_are_read_as_booleans(overrides, key, value):
    """`no` is false: a non-empty string would be truthy, the opposite of the request."""
    from omegaconf import OmegaConf

    assert OmegaConf.select(compose(overrides), key) is value


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.deterministic=abc", "bad config value train.deterministic='abc': expected a boolean (true or false)"),
        ("train.early_stopping=maybe", "bad config value train.early_stopping='maybe': expected a boolean (true or false)"),
        ("method.train_norms=nope", "bad config value method.train_norms='nope': expected a boolean (true or false)"),
        ("train.max_steps=many", "bad config value train.max_steps='many': expected null or an integer >= 1"),
        ("seed=abc", "bad config value seed='abc': expected an integer >= 0"),
        ("train.lrr=1e-4", "bad config override train.lrr=1e-4: unknown key lrr in train (config/hydra/train/); did you mean lr?"),
        ("method.kv_polcy=frozen", "bad config override method.kv_polcy=frozen: unknown key kv_polcy in method (config/hydra/method/); did you mean kv_policy?"),
        ("trian.lr=1", "bad config override trian.lr=1: unknown key trian at the top level; did you mean train?"),
        ("io.checkpont=x", "bad config override io.checkpont=x: unknown key checkpont in io (config/hydra/ctsft.yaml); did you mean checkpoint or proxy_checkpoint?"),
    ],
)  # fmt: skip
def test_wrong_types_and_unknown_keys_are_one_line(override, message):
    with pytest.raises(CtsftError) as err:
        compose([override])
    assert str(err.value) == message


def test_the_workflow_adds_its_io_paths_with_double_plus():
    cfg = compose(["++io.new_output=/tmp/x", "io.checkpoint=/tmp/c"])
    assert cfg.io.new_output == "/tmp/x" and cfg.io.checkpoint == "/tmp/c"


@pytest.fixture
def user_config_dir(tmp_path, monkeypatch) -> Path:
    """A copy of config/hydra a user adds method YAMLs to ($CTSFT_CONFIG_DIR)."""
    import shutil

    folder = tmp_path / "hydra"
    shutil.copytree(REPO / "config" / "hydra", folder)
    monkeypatch.setenv(wc.CONFIG_DIR_ENV, str(folder))
    return folder


@pytest.mark.parametrize(
    "text, message",
    [
        (   # the docs' own example, misspelt: it used to train with kv_policy: shared
            "defaults:\n  - ctsft\n  - _self_\nname: mine\nkv_polcy: frozen\n",
            "mine.yaml: unknown key kv_polcy; did you mean kv_policy?",
        ),
        (   # no defaults list: typed by its kind's schema all the same
            "name: mine\nkind: heads\nheads: circuit\nkv_policy: shared\ntrain_norm: true\n",
            "mine.yaml: unknown key train_norm; did you mean train_norms?",
        ),
        (
            "defaults:\n  - ctsft\n  - _self_\nname: mine\ntrain_norms: maybe\n",
            "mine.yaml: bad config value method.train_norms='maybe': expected a boolean (true or false)",
        ),
        (
            "name: mine\nkind: heads\nheads: circuit\ntrain_norms: false\n",
            "mine.yaml: method.kv_policy has no value: set it there or pass method.kv_policy=<value>",
        ),
    ],
    ids=["typo-with-defaults", "typo-without-defaults", "bad-boolean", "key-missing"],
)  # fmt: skip
def test_a_bad_key_in_a_user_method_yaml_names_the_file(user_config_dir, text, message):
    (user_config_dir / "method" / "mine.yaml").write_text(text)
    with pytest.raises(CtsftError) as err:
        compose(["method=mine"])
    assert str(err.value) == f"{user_config_dir / 'method' / message}"


def test_every_yaml_of_every_group_composes_typed():
    """Each YAML extends its group's schema (or is typed by its method kind's)."""
    import dataclasses as dc

    from omegaconf import OmegaConf

    from ctsft.config_schema import GROUP_SCHEMAS, METHOD_SCHEMAS
    from ctsft.train.methods import KINDS

    assert set(METHOD_SCHEMAS) == set(KINDS)
    for group in [*GROUP_SCHEMAS, "method"]:
        for name in sorted(p.stem for p in (REPO / "config" / "hydra" / group).glob("*.yaml")):
            option = "hub:org/name" if name == "hub" else name
            node = compose([f"{group}={option}"])[group]
            schema = OmegaConf.get_type(node)
            assert dc.is_dataclass(schema), f"{group}/{name}.yaml extends no schema"
            if group == "method":
                assert schema is METHOD_SCHEMAS[node.kind], name


# ---------------------------------------------------------------- every job's config, up front
def job_config_error(cfg: dict, warn=None) -> str:
    """The one-line message of the up-front composition of every job's config (common.smk)."""
    from snakemake.exceptions import WorkflowError

    from ctsft.job_configs import check_job_configs

    wc.validate_config(cfg, SCHEMA)
    wc.check_config(cfg)
    with pytest.raises(WorkflowError) as err:
        check_job_configs(cfg, None, warn or (lambda m: None))
    message = str(err.value)
    assert "\n" not in message.strip(), message
    return message


def tiny() -> dict:
    return yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.update(ks=[1.5]), "config: ks[0]: bad config value cdt.k=1.5: expected a head count (an integer >= 1) or a fraction in (0, 1]"),
        (lambda c: c.update(ks=[2, 99]), "config: ks[1] is 99, more heads than tiny_bert has (8): use at most 8, or a fraction such as 0.05"),
        (
            lambda c: c["methods"].append({"name": "mine", "circuit": True, "overrides": ["method=ctsft", "method.train_norms=maybe"]}),
            "config: methods[4] (mine).overrides: bad config value method.train_norms='maybe': expected a boolean (true or false)",
        ),
        (
            lambda c: c["methods"].append({"name": "mine", "circuit": True, "overrides": ["method=ctsft", "method.kv_polcy=frozen"]}),
            "config: methods[4] (mine).overrides: bad config override method.kv_polcy=frozen: unknown key kv_polcy in method (config/hydra/method/); did you mean kv_policy?",
        ),
        (
            lambda c: c["hydra_overrides"].update(transfer=["train=tiny", "train.lr=[1e-4"]),
            "config: hydra_overrides.transfer[1]: malformed override 'train.lr=[1e-4': no viable alternative at input '[1e-4'",
        ),
        (
            lambda c: c["hydra_overrides"].update(finetune=["train.epochs=two"]),
            "config: hydra_overrides.finetune[0]: bad config value train.epochs='two': expected an integer >= 0",
        ),
        (
            lambda c: c["experiments"][0].update(hydra_overrides={"evaluate": ["task.eval_size=-1"]}),
            "config: experiments[0].hydra_overrides.evaluate[0]: bad config value task.eval_size=-1: expected null or an integer >= 0",
        ),
        (
            lambda c: c["hydra_overrides"].update(all=["train=quik"]),
            "config: hydra_overrides.all[0]: unknown train=quik: choose one of default, quick, tiny",
        ),
    ],
    ids=["k-fraction", "k-beyond-heads", "variant-boolean", "variant-unknown-key", "malformed",
         "step-type", "experiment-range", "unknown-option"],
)  # fmt: skip
def test_every_job_config_is_checked_before_any_job(mutate, message):
    cfg = tiny()
    mutate(cfg)
    assert job_config_error(cfg) == message


def test_a_k_that_selects_every_head_warns():
    from ctsft.job_configs import check_job_configs

    for ks in ([1.0], [8]):
        cfg = tiny()
        cfg["ks"] = ks
        wc.validate_config(cfg, SCHEMA)
        warnings: list[str] = []
        check_job_configs(cfg, None, warnings.append)
        assert warnings == [
            f"config: warning: ks[0] = {ks[0]} selects all 8 heads of tiny_bert: the circuit, "
            "NearZero and random head sets are then the same heads"
        ]
    cfg = tiny()
    wc.validate_config(cfg, SCHEMA)
    warnings = []
    check_job_configs(cfg, None, warnings.append)
    assert warnings == []


def test_the_head_count_comes_from_the_prepared_folder_first(tmp_path):
    from ctsft.job_configs import model_heads

    assert model_heads(tmp_path, 144) == 144  # not prepared yet: the YAML's total_heads
    (tmp_path / "config.json").write_text(
        json.dumps({"num_hidden_layers": 3, "num_attention_heads": 5})
    )
    assert model_heads(tmp_path, 144) == 15
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"n_layer": 2, "n_head": 6}}))
    assert model_heads(tmp_path, None) == 6 * 2


def test_the_declared_head_counts_match_the_tiny_models():
    from ctsft.config_files import group_config
    from ctsft.models.registry import MODELS
    from ctsft.models.tiny import tiny_config

    for name, spec in MODELS.items():
        if spec.tiny_arch:
            c = tiny_config(spec.tiny_arch)
            layers = getattr(c, "num_hidden_layers", None) or c.n_layer
            heads = getattr(c, "num_attention_heads", None) or c.n_head
            assert group_config("model", name)["total_heads"] == layers * heads, name


def test_the_k_count_follows_the_circuit_selection():
    from ctsft.circuit.selection import resolve_k
    from ctsft.job_configs import check_ks

    for k in (0.01, 0.05, 0.5, 1.0, 1, 3, 8, 8.0):
        seen: list[str] = []
        check_ks([k], 8, "m", seen.append)
        assert bool(seen) == (resolve_k(k, 8) == 8), k


def test_the_job_overrides_are_the_rules_overrides():
    from ctsft.job_configs import _sourced

    cfg = quick()
    for step in ("finetune", "transfer", "evaluate", "mechanism", "prepare_model"):
        for exp in [None, ("nusax", "ind"), ("xnli", "en")]:
            assert [o for o, _ in _sourced(cfg, step, exp)] == wc.step_overrides(cfg, step, exp)


def test_a_bad_variant_value_stops_snakemake_before_any_job(tmp_path):
    cfg = tiny()
    cfg["methods"][2]["overrides"] = ["method=ctsft", "method.train_norms=maybe"]
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    proc = dry_run(tmp_path, configfile=str(config_file))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (
        "config: methods[2] (ctsft).overrides: bad config value method.train_norms='maybe': "
        "expected a boolean (true or false)"
    ) in out
    assert len(out.strip().splitlines()) < 10, out
    assert_nothing_written(tmp_path)


# ---------------------------------------------------------------- profile placeholders
def test_placeholders_left_in_a_profile_are_named():
    from snakemake.exceptions import WorkflowError

    from ctsft.profile_check import check_profile

    argv = ["snakemake", "--workflow-profile", "workflow/profiles/slurm-cpu"]
    default = ["tmpdir=system_tmpdir", "slurm_partition=cpu", "slurm_account=<account>"]
    with pytest.raises(WorkflowError) as err:
        check_profile(default, {}, argv, WorkflowError, print)
    assert str(err.value) == (
        "profile workflow/profiles/slurm-cpu/config.yaml: default-resources: slurm_account is "
        "still the placeholder '<account>': fill it in, or delete that line if your cluster has "
        "no accounts"
    )
    gpu = {"finetune": {"slurm_partition": types.SimpleNamespace(raw="<gpu-partition>")}}
    with pytest.raises(WorkflowError, match="set-resources: finetune: slurm_partition is still"):
        check_profile(default[:2], gpu, [*argv, "--cores", "2"], WorkflowError, print)
    warned: list[str] = []
    check_profile(default, gpu, [*argv, "-n"], WorkflowError, warned.append)  # a dry run
    assert warned and warned[0].startswith("warning: profile workflow/profiles/slurm-cpu/")
    assert warned[0].endswith("(1 more: set-resources: finetune: slurm_partition)")
    check_profile(default[:2], {}, argv, WorkflowError, warned.append)  # filled in: nothing
    assert len(warned) == 1


def test_a_submission_through_an_unfilled_profile_stops_before_any_job(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    proc = subprocess.run(
        [SNAKEMAKE, "--workflow-profile", "workflow/profiles/slurm-cpu", "--configfile",
         "config/tiny.yaml", "--config", f"results_dir={tmp_path}/r", f"models_dir={tmp_path}/m",
         "--default-resources", "slurm_partition=cpu", "slurm_account=<account>"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (
        "profile workflow/profiles/slurm-cpu/config.yaml: default-resources: slurm_account is "
        "still the placeholder '<account>'"
    ) in out
    assert "sbatch" not in out and len(out.strip().splitlines()) < 10, out
    assert_nothing_written(tmp_path)
    dry = subprocess.run(
        [SNAKEMAKE, "-n", "--workflow-profile", "workflow/profiles/slurm-cpu", "--configfile",
         "config/tiny.yaml", "--config", f"results_dir={tmp_path}/r", f"models_dir={tmp_path}/m"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "warning: profile workflow/profiles/slurm-cpu/config.yaml: default-resources: " in (
        dry.stdout + dry.stderr
    )


# ---------------------------------------------------------------- one job, several runs
def test_params_runs_give_each_run_its_own_config_in_order(tmp_path, capfd):
    """`params.runs`: one process runs the step once per override list (the `evaluate` rule
    scores every method of a pair and seed this way), each with its own io and its own line."""
    seen = []
    fake = types.ModuleType("fake_runs")
    fake.run = lambda cfg: seen.append((cfg.method.name, cfg.io.metrics, cfg.seed, cfg.threads))
    runs = [
        ["method=ctsft", f"++io.metrics={tmp_path}/a.json"],
        ["method=near_zero", f"++io.metrics={tmp_path}/b.json"],
    ]
    code, _, log = _run_step_script(tmp_path, fake, capfd, overrides=["seed=3"], runs=runs)
    assert code == 0, log
    assert seen == [
        ("ctsft", f"{tmp_path}/a.json", 3, 1),
        ("near_zero", f"{tmp_path}/b.json", 3, 1),
    ]
    commands = [line for line in log.splitlines() if line.startswith("$ python -m ctsft.steps.fake_runs")]  # fmt: skip
    assert len(commands) == 2 and "method=near_zero" in commands[1]
    assert "scores.tsv" not in log  # the named inputs are not passed when the runs name their io
    assert log.count("ctsft.timing: start-up") == 2


def test_a_failing_run_fails_the_whole_job(tmp_path, capfd):
    done = []
    fake = types.ModuleType("fake_failing_runs")

    def run(cfg) -> None:
        if cfg.method.name == "near_zero":
            raise CtsftError("broken checkpoint")
        done.append(cfg.method.name)

    fake.run = run
    runs = [["method=ctsft"], ["method=near_zero"], ["method=full_ft"]]
    code, err, log = _run_step_script(tmp_path, fake, capfd, runs=runs)
    assert code == 2 and "error: broken checkpoint" in log and "broken checkpoint" in err
    assert done == ["ctsft"]  # stops at the first failure; Snakemake removes the job's outputs
